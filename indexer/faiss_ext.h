/*
 * indexer/faiss_ext.h - the FAISS C API as medsem uses it.
 *
 *     FaissIndex *ix = NULL;
 *     if (faiss_index_factory(&ix, 512, "IDMap2,HNSW32,Flat", METRIC_INNER_PRODUCT) != 0)
 *         return report(faiss_get_last_error());
 *     rc = faiss_Index_add_with_ids(ix, n, vecs, ids);        (ids: user ids)
 *     rc = faiss_Index_search(ix, 1, query, 10, dist, labels); (labels: user ids)
 *     faiss_Index_free(ix);
 *
 * Names keep the upstream faiss_<Class>_<verb> spelling rather than a medsem
 * prefix, so that code written here links unchanged against a real
 * libfaiss_c. Debian 12 ships FAISS 1.7.3 headers but no libfaiss_c; there
 * configure leaves HAVE_FAISS_C undefined and indexer/faiss_shim.cpp
 * implements the subset medsem calls over the static C++ library.
 *
 * Conventions of the whole API (upstream's, kept by the shim):
 *  - int-returning functions return 0 (OK) or a negative FaissErrorCode;
 *    faiss_get_last_error() then returns the message. The message is per
 *    thread and valid until the next FAISS call on that thread; before any
 *    failure it is NULL. Out-params are written only on success.
 *  - Every *_new(&p, ...) object is released with the matching *_free(p);
 *    *_free(NULL) is a no-op.
 *  - The "inherited" handle types (FaissIndexIVF, FaissIndexIDMap2,
 *    FaissSearchParametersIVF, ...) are the same C type as their parent and
 *    may be passed wherever the parent is expected. The IDSelector*
 *    handles are distinct C types: cast them to (FaissIDSelector *).
 *
 * Shim-only behaviour (not in upstream libfaiss_c):
 *  - faiss_Index_search, faiss_Index_search_with_params and
 *    faiss_Index_range_search fail on an untrained index instead of
 *    returning empty results, and reject k <= 0 / n < 0 up front.
 *  - faiss_Index_range_search fails unless the result was created for
 *    exactly n queries.
 *  - faiss_Index_remove_ids on an IDMap / IDMap2 over an IVF works (upstream
 *    FAISS, 1.7.3 and later alike, corrupts the id map and may abort the
 *    process on the second removal); through an IDMap over anything other
 *    than a Flat-coded index or an IVF it fails cleanly. Code that must
 *    also run on a system libfaiss_c should not remove through IDMap-over-
 *    IVF: an IVF stores user ids natively ("IVF1024,Flat" + add_with_ids).
 */
#ifndef MEDSEM_INDEXER_FAISS_EXT_H
#define MEDSEM_INDEXER_FAISS_EXT_H

#include <stddef.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef HAVE_FAISS_C

/* ---- FAISS >= 1.7.4 C API additions, same names and signatures ---------
 *
 * A real libfaiss_c >= 1.7.4 declares these in its own headers. */

/* Parameters for one search call. A params object never owns its selector:
 * `sel` (may be NULL = no filtering) must outlive every search that uses
 * the params, and is freed separately with faiss_IDSelector_free. */
FAISS_DECLARE_CLASS(SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParameters)
int faiss_SearchParameters_new(FaissSearchParameters **p_sp,
                               FaissIDSelector *sel);

/* IVF parameters: nprobe lists probed (default 1), max_codes codes visited
 * per query (0 = unlimited). Accepted by IVF indexes and by an IDMap /
 * IDMap2 wrapping one. */
FAISS_DECLARE_CLASS_INHERITED(SearchParametersIVF, SearchParameters)
FAISS_DECLARE_DESTRUCTOR(SearchParametersIVF)
int faiss_SearchParametersIVF_new(FaissSearchParametersIVF **p_sp);
int faiss_SearchParametersIVF_new_with(FaissSearchParametersIVF **p_sp,
                                       FaissIDSelector *sel, size_t nprobe,
                                       size_t max_codes);
/* Returns sp itself when it is IVF parameters, else NULL. */
FaissSearchParametersIVF *faiss_SearchParametersIVF_cast(
    FaissSearchParameters *sp);
/* Borrowed: the selector given at creation, or NULL. */
const FaissIDSelector *faiss_SearchParametersIVF_sel(
    const FaissSearchParametersIVF *sp);
size_t faiss_SearchParametersIVF_nprobe(const FaissSearchParametersIVF *sp);
void faiss_SearchParametersIVF_set_nprobe(FaissSearchParametersIVF *sp,
                                          size_t nprobe);
size_t faiss_SearchParametersIVF_max_codes(
    const FaissSearchParametersIVF *sp);
void faiss_SearchParametersIVF_set_max_codes(FaissSearchParametersIVF *sp,
                                             size_t max_codes);

/* Like faiss_Index_search, with per-call parameters (NULL = none). The
 * params type must suit the index (IVF params for IVF, HNSW params for
 * HNSW, plain params for Flat), else FAISS_EXCEPT. On an IDMap / IDMap2
 * the selector is asked about user ids and labels come back as user ids. */
int faiss_Index_search_with_params(const FaissIndex *index, idx_t n,
                                   const float *x, idx_t k,
                                   const FaissSearchParameters *params,
                                   float *distances, idx_t *labels);

/* Boolean combinations of selectors. They borrow their operands, which
 * must outlive them; freeing the combination (faiss_IDSelector_free on the
 * cast handle) does not free the operands. */
FAISS_DECLARE_CLASS(IDSelectorNot)
int faiss_IDSelectorNot_new(FaissIDSelectorNot **p_sel,
                            const FaissIDSelector *sel);
FAISS_DECLARE_CLASS(IDSelectorAnd)
int faiss_IDSelectorAnd_new(FaissIDSelectorAnd **p_sel,
                            const FaissIDSelector *lhs_sel,
                            const FaissIDSelector *rhs_sel);
FAISS_DECLARE_CLASS(IDSelectorOr)
int faiss_IDSelectorOr_new(FaissIDSelectorOr **p_sel,
                           const FaissIDSelector *lhs_sel,
                           const FaissIDSelector *rhs_sel);
FAISS_DECLARE_CLASS(IDSelectorXOr)
int faiss_IDSelectorXOr_new(FaissIDSelectorXOr **p_sel,
                            const FaissIDSelector *lhs_sel,
                            const FaissIDSelector *rhs_sel);

/* faiss_IndexIDMap_sub_index / faiss_IndexIDMap2_sub_index are already
 * declared by the 1.7.3 MetaIndexes_c.h; the shim implements them. */

/* ---- medsem's own extension: per-call HNSW parameters ------------------
 *
 * Upstream's C API has no HNSW search parameters. They exist only with the
 * shim: with a system libfaiss_c the shim is not built, so the functions
 * below are not declared and MEDSEM_HAVE_HNSW_PARAMS is left undefined.
 * Callers write `#ifdef MEDSEM_HAVE_HNSW_PARAMS` and otherwise fall back to
 * faiss_ParameterSpace_set_index_parameter(..., "efSearch", v), which
 * changes the index for every thread. */
#define MEDSEM_HAVE_HNSW_PARAMS 1

FAISS_DECLARE_CLASS_INHERITED(SearchParametersHNSW, SearchParameters)
/* efSearch (> 0) is the candidate list size; HNSW uses max(efSearch, k).
 * sel is borrowed as for faiss_SearchParameters_new. The result may be
 * passed as (FaissSearchParameters *) to faiss_Index_search_with_params on
 * an HNSW index or an IDMap / IDMap2 wrapping one. */
int faiss_SearchParametersHNSW_new_with(FaissSearchParametersHNSW **p_sp,
                                        FaissIDSelector *sel, int efSearch);
FAISS_DECLARE_DESTRUCTOR(SearchParametersHNSW)

#endif /* !HAVE_FAISS_C */

#ifdef __cplusplus
}
#endif

#endif /* MEDSEM_INDEXER_FAISS_EXT_H */
