// indexer/faiss_shim.cpp - medsem's implementation of the FAISS C API subset
// it calls, over the static C++ libfaiss, for systems (Debian 12) that ship
// the C API headers but no libfaiss_c. See indexer/faiss_ext.h for the API
// and the few places where the shim is stricter than upstream.
//
// Handle convention: every index handle is the faiss::Index* of the object,
// every params handle its faiss::SearchParameters*, every selector handle its
// faiss::IDSelector*. Derived views (IndexIVF, IndexIDMap, ...) are reached
// with static_cast/dynamic_cast from that base pointer, never by
// reinterpreting the handle as the derived type, so the address of a base
// subobject is never confused with that of the whole object.
//
// No C++ exception may cross into C: every function that can throw runs its
// body through guarded(), which turns the exception into the C error code
// and records the message for faiss_get_last_error().

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

// With a system libfaiss_c this file is not built (configure's choice), and
// were it compiled anyway it must not define a second copy of the C API.
// The medsem extension (HNSW parameters) is therefore unavailable there; the
// header declares it only when HAVE_FAISS_C is undefined.
#ifndef HAVE_FAISS_C

#include "indexer/faiss_ext.h"

#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/HNSW.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/DirectMap.h>
#include <faiss/invlists/InvertedLists.h>

#include <cstddef>
#include <exception>
#include <string>
#include <vector>

namespace {

// ---- errors ---------------------------------------------------------------

// Per thread, as upstream: a failure on one thread must not replace the
// message another thread is about to read. last_error_ptr is what
// faiss_get_last_error() hands out: NULL before any failure, otherwise
// last_error's text, or a fixed string when copying the message failed.
thread_local std::string last_error;
thread_local const char *last_error_ptr = nullptr;

void record_error(const char *what) noexcept
{
    try {
        last_error.assign(what != nullptr && *what != '\0' ? what
                                                          : "unknown error");
        last_error_ptr = last_error.c_str();
    } catch (...) {
        last_error_ptr = "out of memory while recording a FAISS error";
    }
}

// Runs body; maps an escaping exception to its FaissErrorCode.
template <typename F>
int guarded(F &&body) noexcept
{
    try {
        body();
        return OK;
    } catch (const faiss::FaissException &e) {
        record_error(e.what());
        return FAISS_EXCEPT;
    } catch (const std::exception &e) {
        record_error(e.what());
        return STD_EXCEPT;
    } catch (...) {
        record_error("unknown C++ exception");
        return UNKNOWN_EXCEPT;
    }
}

[[noreturn]] void fail(const char *msg)
{
    throw faiss::FaissException(msg);
}

// ---- handle conversions ---------------------------------------------------

faiss::Index *ix(FaissIndex *h)
{
    return reinterpret_cast<faiss::Index *>(h);
}

const faiss::Index *ix(const FaissIndex *h)
{
    return reinterpret_cast<const faiss::Index *>(h);
}

FaissIndex *index_handle(faiss::Index *p)
{
    return reinterpret_cast<FaissIndex *>(p);
}

template <typename H>
faiss::IDSelector *sel_of(H *h)
{
    return reinterpret_cast<faiss::IDSelector *>(h);
}

template <typename H>
const faiss::IDSelector *sel_of(const H *h)
{
    return reinterpret_cast<const faiss::IDSelector *>(h);
}

template <typename H>
H *sel_handle(faiss::IDSelector *p)
{
    return reinterpret_cast<H *>(p);
}

faiss::SearchParameters *sp_of(FaissSearchParameters *h)
{
    return reinterpret_cast<faiss::SearchParameters *>(h);
}

const faiss::SearchParameters *sp_of(const FaissSearchParameters *h)
{
    return reinterpret_cast<const faiss::SearchParameters *>(h);
}

FaissSearchParameters *sp_handle(faiss::SearchParameters *p)
{
    return reinterpret_cast<FaissSearchParameters *>(p);
}

faiss::SearchParametersIVF *ivf_sp(FaissSearchParametersIVF *h)
{
    return static_cast<faiss::SearchParametersIVF *>(sp_of(h));
}

const faiss::SearchParametersIVF *ivf_sp(const FaissSearchParametersIVF *h)
{
    return static_cast<const faiss::SearchParametersIVF *>(sp_of(h));
}

faiss::IndexIVF *ivf(FaissIndexIVF *h)
{
    return static_cast<faiss::IndexIVF *>(ix(h));
}

const faiss::IndexIVF *ivf(const FaissIndexIVF *h)
{
    return static_cast<const faiss::IndexIVF *>(ix(h));
}

// IndexIDMap2 derives from IndexIDMap, so both handle kinds reach here.
faiss::IndexIDMap *idmap(FaissIndex *h)
{
    return static_cast<faiss::IndexIDMap *>(ix(h));
}

const faiss::IndexIDMap *idmap(const FaissIndex *h)
{
    return static_cast<const faiss::IndexIDMap *>(ix(h));
}

faiss::RangeSearchResult *rsr_of(FaissRangeSearchResult *h)
{
    return reinterpret_cast<faiss::RangeSearchResult *>(h);
}

const faiss::RangeSearchResult *rsr_of(const FaissRangeSearchResult *h)
{
    return reinterpret_cast<const faiss::RangeSearchResult *>(h);
}

// ---- search helpers -------------------------------------------------------

// Arguments the C++ library would either accept silently (an untrained IVF
// returns all -1) or check only in some index types.
void check_query(const faiss::Index *index, idx_t n)
{
    if (n < 0)
        fail("number of queries must be >= 0");
    if (!index->is_trained)
        fail("index is not trained");
}

void check_knn(const faiss::Index *index, idx_t n, idx_t k)
{
    check_query(index, n);
    if (k <= 0)
        fail("k must be > 0");
}

// The selector handed to the sub-index of an IndexIDMap: the sub-index asks
// about its own sequence numbers 0..ntotal-1, the caller's selector speaks
// user ids, and id_map translates one into the other.
struct UserIdSelector final : faiss::IDSelector {
    const std::vector<idx_t> &id_map;
    const faiss::IDSelector *user;

    UserIdSelector(const std::vector<idx_t> &map, const faiss::IDSelector *sel)
        : id_map(map), user(sel)
    {
    }

    bool is_member(idx_t i) const override
    {
        return i >= 0 && static_cast<size_t>(i) < id_map.size() &&
               user->is_member(id_map[static_cast<size_t>(i)]);
    }
};

void search_params(const faiss::Index *index, idx_t n, const float *x,
                   idx_t k, float *distances, idx_t *labels,
                   const faiss::SearchParameters *params);

// FAISS 1.7.3's IndexIDMap::search rejects any params. Search the sub-index
// with a copy of the params (same concrete type P, so nprobe / efSearch
// survive) whose selector sees user ids, then turn sequence numbers back
// into user ids. Copying instead of patching params->sel in place keeps the
// caller's object untouched, so one params object may serve many threads.
template <typename P>
void search_idmap_as(const faiss::IndexIDMap &map, const P &params, idx_t n,
                     const float *x, idx_t k, float *distances, idx_t *labels)
{
    UserIdSelector user_ids(map.id_map, params.sel);
    P local(params);
    local.sel = params.sel != nullptr ? &user_ids : nullptr;
    search_params(map.index, n, x, k, distances, labels, &local);

    const size_t total = static_cast<size_t>(n) * static_cast<size_t>(k);
    const size_t nmap = map.id_map.size();
    for (size_t i = 0; i < total; i++) {
        const idx_t seq = labels[i];
        if (seq < 0)
            continue;
        if (static_cast<size_t>(seq) >= nmap)
            fail("sub-index returned a label outside the id map");
        labels[i] = map.id_map[static_cast<size_t>(seq)];
    }
}

// Recursive so that an IDMap over an IDMap still translates at each level.
void search_params(const faiss::Index *index, idx_t n, const float *x,
                   idx_t k, float *distances, idx_t *labels,
                   const faiss::SearchParameters *params)
{
    const auto *map = dynamic_cast<const faiss::IndexIDMap *>(index);
    if (params == nullptr || map == nullptr) {
        index->search(n, x, k, distances, labels, params);
        return;
    }
    // Most derived first: the params types the C API can create.
    if (const auto *h = dynamic_cast<const faiss::SearchParametersHNSW *>(params))
        search_idmap_as(*map, *h, n, x, k, distances, labels);
    else if (const auto *v =
                 dynamic_cast<const faiss::SearchParametersIVF *>(params))
        search_idmap_as(*map, *v, n, x, k, distances, labels);
    else
        search_idmap_as(*map, *params, n, x, k, distances, labels);
}

// ---- removal through an IDMap ---------------------------------------------

// Selects sub-index sequence numbers marked -1 (removed) in new_seq.
struct RemovedSeqSelector final : faiss::IDSelector {
    const std::vector<idx_t> &new_seq;

    explicit RemovedSeqSelector(const std::vector<idx_t> &seq) : new_seq(seq)
    {
    }

    bool is_member(idx_t s) const override
    {
        return s >= 0 && static_cast<size_t>(s) < new_seq.size() &&
               new_seq[static_cast<size_t>(s)] < 0;
    }
};

// IndexIDMap::remove_ids compacts id_map and assumes the sub-index renumbers
// its vectors 0..ntotal-1 the same way, as flat-coded indexes do. An IVF
// keeps the numbers it stored, so the map falls out of step: wrong labels
// after one removal, a FAISS_ASSERT abort after the next (upstream calls
// IDMap-over-IVF removal unsupported and leaves it so). Here the stored
// numbers are renumbered in place. Everything that can fail is checked
// before the index is touched.
size_t remove_from_idmap_ivf(faiss::IndexIDMap &map, faiss::IndexIVF &ivf,
                             const faiss::IDSelector &sel)
{
    auto *lists = dynamic_cast<faiss::ArrayInvertedLists *>(ivf.invlists);
    if (lists == nullptr)
        fail("remove_ids through an IDMap over IVF needs array inverted lists");
    if (ivf.direct_map.type != faiss::DirectMap::NoMap)
        fail("remove_ids through an IDMap over IVF needs an IVF without "
             "direct map");
    const size_t n = map.id_map.size();
    if (static_cast<size_t>(map.ntotal) != n ||
        static_cast<size_t>(ivf.ntotal) != n)
        fail("IDMap and its IVF disagree on the number of vectors");
    for (const auto &list : lists->ids)
        for (idx_t s : list)
            if (s < 0 || static_cast<size_t>(s) >= n)
                fail("IVF under an IDMap holds a label that is not a "
                     "sequence number");

    // new_seq[s]: the number vector s has after the removal, -1 if removed.
    std::vector<idx_t> new_seq(n);
    idx_t next = 0;
    for (size_t s = 0; s < n; s++)
        new_seq[s] = sel.is_member(map.id_map[s]) ? -1 : next++;
    const size_t nremove = n - static_cast<size_t>(next);
    if (nremove == 0)
        return 0;

    RemovedSeqSelector removed(new_seq);
    if (ivf.remove_ids(removed) != nremove)
        fail("IVF under an IDMap holds duplicate labels; index is corrupt");
    for (auto &list : lists->ids)
        for (idx_t &s : list)
            s = new_seq[static_cast<size_t>(s)];

    size_t j = 0;
    for (size_t s = 0; s < n; s++)
        if (new_seq[s] >= 0)
            map.id_map[j++] = map.id_map[s];
    map.id_map.resize(j);
    map.ntotal = static_cast<idx_t>(j);
    if (auto *map2 = dynamic_cast<faiss::IndexIDMap2 *>(&map))
        map2->construct_rev_map();
    return nremove;
}

size_t remove_ids(faiss::Index &index, const faiss::IDSelector &sel)
{
    auto *map = dynamic_cast<faiss::IndexIDMap *>(&index);
    if (map == nullptr)
        return index.remove_ids(sel);
    if (dynamic_cast<faiss::IndexFlatCodes *>(map->index) != nullptr)
        return map->remove_ids(sel); // virtual: IDMap2 rebuilds rev_map
    if (auto *ivf = dynamic_cast<faiss::IndexIVF *>(map->index))
        return remove_from_idmap_ivf(*map, *ivf, sel);
    // Any other sub-index might not renumber either; refuse rather than
    // risk the abort.
    fail("remove_ids through an IDMap needs a Flat-coded or IVF sub-index");
}

// ---- selectors missing from FAISS 1.7.3 -----------------------------------

// 1.7.3 has IDSelectorNot but no And/Or/XOr; one class covers the three.
// Operands are borrowed, as upstream.
struct BinarySelector final : faiss::IDSelector {
    enum class Op { And, Or, XOr };

    Op op;
    const faiss::IDSelector *lhs;
    const faiss::IDSelector *rhs;

    BinarySelector(Op o, const faiss::IDSelector *l, const faiss::IDSelector *r)
        : op(o), lhs(l), rhs(r)
    {
    }

    bool is_member(idx_t id) const override
    {
        switch (op) {
        case Op::And:
            return lhs->is_member(id) && rhs->is_member(id);
        case Op::Or:
            return lhs->is_member(id) || rhs->is_member(id);
        case Op::XOr:
            break;
        }
        return lhs->is_member(id) != rhs->is_member(id);
    }
};

template <typename H>
int new_binary_selector(H **p_sel, BinarySelector::Op op,
                        const FaissIDSelector *lhs, const FaissIDSelector *rhs)
{
    return guarded([&] {
        if (lhs == nullptr || rhs == nullptr)
            fail("selector operand must not be NULL");
        faiss::IDSelector *s = new BinarySelector(op, sel_of(lhs), sel_of(rhs));
        *p_sel = sel_handle<H>(s);
    });
}

} // namespace

extern "C" {

// ---- error_c.h ------------------------------------------------------------

const char *faiss_get_last_error()
{
    return last_error_ptr;
}

// ---- index_factory_c.h ----------------------------------------------------

int faiss_index_factory(FaissIndex **p_index, int d, const char *description,
                        FaissMetricType metric)
{
    return guarded([&] {
        if (description == nullptr)
            fail("index description must not be NULL");
        faiss::Index *p = faiss::index_factory(
            d, description, static_cast<faiss::MetricType>(metric));
        *p_index = index_handle(p);
    });
}

// ---- Index_c.h ------------------------------------------------------------

void faiss_Index_free(FaissIndex *obj)
{
    delete ix(obj);
}

int faiss_Index_d(const FaissIndex *index)
{
    return ix(index)->d;
}

int faiss_Index_is_trained(const FaissIndex *index)
{
    return ix(index)->is_trained ? 1 : 0;
}

idx_t faiss_Index_ntotal(const FaissIndex *index)
{
    return ix(index)->ntotal;
}

FaissMetricType faiss_Index_metric_type(const FaissIndex *index)
{
    return static_cast<FaissMetricType>(ix(index)->metric_type);
}

int faiss_Index_train(FaissIndex *index, idx_t n, const float *x)
{
    return guarded([&] {
        if (n < 0)
            fail("number of training vectors must be >= 0");
        ix(index)->train(n, x);
    });
}

int faiss_Index_add(FaissIndex *index, idx_t n, const float *x)
{
    return guarded([&] {
        if (n < 0)
            fail("number of vectors must be >= 0");
        ix(index)->add(n, x);
    });
}

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x,
                             const idx_t *xids)
{
    return guarded([&] {
        if (n < 0)
            fail("number of vectors must be >= 0");
        ix(index)->add_with_ids(n, x, xids);
    });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x,
                       idx_t k, float *distances, idx_t *labels)
{
    return guarded([&] {
        const faiss::Index *p = ix(index);
        check_knn(p, n, k);
        p->search(n, x, k, distances, labels);
    });
}

int faiss_Index_range_search(const FaissIndex *index, idx_t n, const float *x,
                             float radius, FaissRangeSearchResult *result)
{
    return guarded([&] {
        const faiss::Index *p = ix(index);
        faiss::RangeSearchResult *r = rsr_of(result);
        check_query(p, n);
        if (r == nullptr || r->nq != static_cast<size_t>(n))
            fail("range search result must be created for exactly n queries");
        // IndexIDMap::range_search maps labels to user ids itself.
        p->range_search(n, x, radius, r);
    });
}

int faiss_Index_reset(FaissIndex *index)
{
    return guarded([&] { ix(index)->reset(); });
}

int faiss_Index_remove_ids(FaissIndex *index, const FaissIDSelector *sel,
                           size_t *n_removed)
{
    return guarded([&] {
        if (sel == nullptr)
            fail("selector must not be NULL");
        const size_t removed = remove_ids(*ix(index), *sel_of(sel));
        if (n_removed != nullptr)
            *n_removed = removed;
    });
}

int faiss_Index_reconstruct(const FaissIndex *index, idx_t key, float *recons)
{
    return guarded([&] { ix(index)->reconstruct(key, recons); });
}

// ---- impl/AuxIndexStructures_c.h ------------------------------------------

int faiss_RangeSearchResult_new(FaissRangeSearchResult **p_rsr, idx_t nq)
{
    return guarded([&] {
        if (nq < 0)
            fail("number of queries must be >= 0");
        auto *r = new faiss::RangeSearchResult(nq);
        *p_rsr = reinterpret_cast<FaissRangeSearchResult *>(r);
    });
}

void faiss_RangeSearchResult_free(FaissRangeSearchResult *obj)
{
    delete rsr_of(obj);
}

size_t faiss_RangeSearchResult_nq(const FaissRangeSearchResult *rsr)
{
    return rsr_of(rsr)->nq;
}

size_t faiss_RangeSearchResult_buffer_size(const FaissRangeSearchResult *rsr)
{
    return rsr_of(rsr)->buffer_size;
}

void faiss_RangeSearchResult_lims(FaissRangeSearchResult *rsr, size_t **lims)
{
    *lims = rsr_of(rsr)->lims;
}

void faiss_RangeSearchResult_labels(FaissRangeSearchResult *rsr,
                                    idx_t **labels, float **distances)
{
    faiss::RangeSearchResult *r = rsr_of(rsr);
    *labels = r->labels;
    *distances = r->distances;
}

void faiss_IDSelector_free(FaissIDSelector *obj)
{
    delete sel_of(obj);
}

void faiss_IDSelectorRange_free(FaissIDSelectorRange *obj)
{
    delete sel_of(obj);
}

// Cannot report an error through its return value; a selector that throws
// (none of ours does) counts as "not a member" and sets the last error.
int faiss_IDSelector_is_member(const FaissIDSelector *sel, idx_t id)
{
    bool member = false;
    if (guarded([&] { member = sel_of(sel)->is_member(id); }) != OK)
        return 0;
    return member ? 1 : 0;
}

int faiss_IDSelectorRange_new(FaissIDSelectorRange **p_sel, idx_t imin,
                              idx_t imax)
{
    return guarded([&] {
        faiss::IDSelector *s = new faiss::IDSelectorRange(imin, imax);
        *p_sel = sel_handle<FaissIDSelectorRange>(s);
    });
}

int faiss_IDSelectorBatch_new(FaissIDSelectorBatch **p_sel, size_t n,
                              const idx_t *indices)
{
    return guarded([&] {
        if (n > 0 && indices == nullptr)
            fail("indices must not be NULL");
        faiss::IDSelector *s = new faiss::IDSelectorBatch(n, indices);
        *p_sel = sel_handle<FaissIDSelectorBatch>(s);
    });
}

// ---- index_io_c.h ---------------------------------------------------------

int faiss_write_index(const FaissIndex *idx, FILE *f)
{
    return guarded([&] {
        if (f == nullptr)
            fail("FILE must not be NULL");
        faiss::write_index(ix(idx), f);
    });
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out)
{
    return guarded([&] {
        if (f == nullptr)
            fail("FILE must not be NULL");
        *p_out = index_handle(faiss::read_index(f, io_flags));
    });
}

// ---- IndexIVF_c.h ---------------------------------------------------------

FaissIndexIVF *faiss_IndexIVF_cast(FaissIndex *index)
{
    return dynamic_cast<faiss::IndexIVF *>(ix(index)) != nullptr ? index
                                                                 : nullptr;
}

size_t faiss_IndexIVF_nlist(const FaissIndexIVF *index)
{
    return ivf(index)->nlist;
}

size_t faiss_IndexIVF_nprobe(const FaissIndexIVF *index)
{
    return ivf(index)->nprobe;
}

void faiss_IndexIVF_set_nprobe(FaissIndexIVF *index, size_t nprobe)
{
    ivf(index)->nprobe = nprobe;
}

// ---- MetaIndexes_c.h ------------------------------------------------------

int faiss_IndexIDMap_new(FaissIndexIDMap **p_index, FaissIndex *index)
{
    return guarded([&] {
        if (index == nullptr)
            fail("sub-index must not be NULL");
        faiss::Index *m = new faiss::IndexIDMap(ix(index));
        *p_index = index_handle(m);
    });
}

FaissIndexIDMap *faiss_IndexIDMap_cast(FaissIndex *index)
{
    return dynamic_cast<faiss::IndexIDMap *>(ix(index)) != nullptr ? index
                                                                   : nullptr;
}

int faiss_IndexIDMap_own_fields(const FaissIndexIDMap *index)
{
    return idmap(index)->own_fields ? 1 : 0;
}

void faiss_IndexIDMap_set_own_fields(FaissIndexIDMap *index, int own_fields)
{
    idmap(index)->own_fields = own_fields != 0;
}

void faiss_IndexIDMap_id_map(FaissIndexIDMap *index, idx_t **p_id_map,
                             size_t *p_size)
{
    faiss::IndexIDMap *m = idmap(index);
    *p_id_map = m->id_map.data();
    *p_size = m->id_map.size();
}

FaissIndex *faiss_IndexIDMap_sub_index(FaissIndexIDMap *index)
{
    return index_handle(idmap(index)->index);
}

int faiss_IndexIDMap2_new(FaissIndexIDMap2 **p_index, FaissIndex *index)
{
    return guarded([&] {
        if (index == nullptr)
            fail("sub-index must not be NULL");
        faiss::Index *m = new faiss::IndexIDMap2(ix(index));
        *p_index = index_handle(m);
    });
}

FaissIndexIDMap2 *faiss_IndexIDMap2_cast(FaissIndex *index)
{
    return dynamic_cast<faiss::IndexIDMap2 *>(ix(index)) != nullptr ? index
                                                                    : nullptr;
}

int faiss_IndexIDMap2_own_fields(const FaissIndexIDMap2 *index)
{
    return idmap(index)->own_fields ? 1 : 0;
}

void faiss_IndexIDMap2_set_own_fields(FaissIndexIDMap2 *index, int own_fields)
{
    idmap(index)->own_fields = own_fields != 0;
}

int faiss_IndexIDMap2_construct_rev_map(FaissIndexIDMap2 *index)
{
    return guarded([&] {
        static_cast<faiss::IndexIDMap2 *>(ix(index))->construct_rev_map();
    });
}

void faiss_IndexIDMap2_id_map(FaissIndexIDMap2 *index, idx_t **p_id_map,
                              size_t *p_size)
{
    faiss_IndexIDMap_id_map(index, p_id_map, p_size);
}

FaissIndex *faiss_IndexIDMap2_sub_index(FaissIndexIDMap2 *index)
{
    return faiss_IndexIDMap_sub_index(index);
}

// ---- AutoTune_c.h ---------------------------------------------------------

int faiss_ParameterSpace_new(FaissParameterSpace **space)
{
    return guarded([&] {
        auto *ps = new faiss::ParameterSpace();
        *space = reinterpret_cast<FaissParameterSpace *>(ps);
    });
}

void faiss_ParameterSpace_free(FaissParameterSpace *obj)
{
    delete reinterpret_cast<faiss::ParameterSpace *>(obj);
}

int faiss_ParameterSpace_set_index_parameter(const FaissParameterSpace *space,
                                             FaissIndex *index,
                                             const char *name, double value)
{
    return guarded([&] {
        if (name == nullptr)
            fail("parameter name must not be NULL");
        reinterpret_cast<const faiss::ParameterSpace *>(space)
            ->set_index_parameter(ix(index), name, value);
    });
}

// ---- FAISS >= 1.7.4 additions (declared in faiss_ext.h) -------------------

int faiss_SearchParameters_new(FaissSearchParameters **p_sp,
                               FaissIDSelector *sel)
{
    return guarded([&] {
        auto *p = new faiss::SearchParameters();
        p->sel = sel_of(sel);
        *p_sp = sp_handle(p);
    });
}

void faiss_SearchParameters_free(FaissSearchParameters *obj)
{
    delete sp_of(obj);
}

int faiss_SearchParametersIVF_new(FaissSearchParametersIVF **p_sp)
{
    return guarded([&] {
        faiss::SearchParameters *p = new faiss::SearchParametersIVF();
        *p_sp = sp_handle(p);
    });
}

int faiss_SearchParametersIVF_new_with(FaissSearchParametersIVF **p_sp,
                                       FaissIDSelector *sel, size_t nprobe,
                                       size_t max_codes)
{
    return guarded([&] {
        auto *p = new faiss::SearchParametersIVF();
        p->sel = sel_of(sel);
        p->nprobe = nprobe;
        p->max_codes = max_codes;
        *p_sp = sp_handle(p);
    });
}

void faiss_SearchParametersIVF_free(FaissSearchParametersIVF *obj)
{
    delete sp_of(obj);
}

FaissSearchParametersIVF *faiss_SearchParametersIVF_cast(
    FaissSearchParameters *sp)
{
    return dynamic_cast<faiss::SearchParametersIVF *>(sp_of(sp)) != nullptr
               ? sp
               : nullptr;
}

const FaissIDSelector *faiss_SearchParametersIVF_sel(
    const FaissSearchParametersIVF *sp)
{
    return reinterpret_cast<const FaissIDSelector *>(ivf_sp(sp)->sel);
}

size_t faiss_SearchParametersIVF_nprobe(const FaissSearchParametersIVF *sp)
{
    return ivf_sp(sp)->nprobe;
}

void faiss_SearchParametersIVF_set_nprobe(FaissSearchParametersIVF *sp,
                                          size_t nprobe)
{
    ivf_sp(sp)->nprobe = nprobe;
}

size_t faiss_SearchParametersIVF_max_codes(const FaissSearchParametersIVF *sp)
{
    return ivf_sp(sp)->max_codes;
}

void faiss_SearchParametersIVF_set_max_codes(FaissSearchParametersIVF *sp,
                                             size_t max_codes)
{
    ivf_sp(sp)->max_codes = max_codes;
}

int faiss_Index_search_with_params(const FaissIndex *index, idx_t n,
                                   const float *x, idx_t k,
                                   const FaissSearchParameters *params,
                                   float *distances, idx_t *labels)
{
    return guarded([&] {
        const faiss::Index *p = ix(index);
        check_knn(p, n, k);
        search_params(p, n, x, k, distances, labels, sp_of(params));
    });
}

int faiss_IDSelectorNot_new(FaissIDSelectorNot **p_sel,
                            const FaissIDSelector *sel)
{
    return guarded([&] {
        if (sel == nullptr)
            fail("selector operand must not be NULL");
        faiss::IDSelector *s = new faiss::IDSelectorNot(sel_of(sel));
        *p_sel = sel_handle<FaissIDSelectorNot>(s);
    });
}

int faiss_IDSelectorAnd_new(FaissIDSelectorAnd **p_sel,
                            const FaissIDSelector *lhs_sel,
                            const FaissIDSelector *rhs_sel)
{
    return new_binary_selector(p_sel, BinarySelector::Op::And, lhs_sel,
                               rhs_sel);
}

int faiss_IDSelectorOr_new(FaissIDSelectorOr **p_sel,
                           const FaissIDSelector *lhs_sel,
                           const FaissIDSelector *rhs_sel)
{
    return new_binary_selector(p_sel, BinarySelector::Op::Or, lhs_sel,
                               rhs_sel);
}

int faiss_IDSelectorXOr_new(FaissIDSelectorXOr **p_sel,
                            const FaissIDSelector *lhs_sel,
                            const FaissIDSelector *rhs_sel)
{
    return new_binary_selector(p_sel, BinarySelector::Op::XOr, lhs_sel,
                               rhs_sel);
}

// ---- medsem extension: HNSW search parameters (faiss_ext.h) ---------------

int faiss_SearchParametersHNSW_new_with(FaissSearchParametersHNSW **p_sp,
                                        FaissIDSelector *sel, int efSearch)
{
    return guarded([&] {
        if (efSearch <= 0)
            fail("efSearch must be > 0");
        auto *p = new faiss::SearchParametersHNSW();
        p->sel = sel_of(sel);
        p->efSearch = efSearch;
        *p_sp = sp_handle(p);
    });
}

void faiss_SearchParametersHNSW_free(FaissSearchParametersHNSW *obj)
{
    delete sp_of(obj);
}

} // extern "C"

#endif // !HAVE_FAISS_C
