// imageio/dicom_gdcm.cpp - reads DICOM files through GDCM (Debian's
// libgdcm-dev) for imageio/dicom.c: the header attributes medsem uses and
// the decoded pixels, whatever the transfer syntax (GDCM decodes implicit
// and explicit VR little endian, explicit big endian, deflated, RLE, JPEG
// baseline, extended and lossless, JPEG-LS and JPEG 2000 itself).
//
// No C++ exception crosses into C: each entry point catches everything and
// turns it into an img_errno with a message. GDCM's own diagnostics
// (gdcm::Trace, which prints to std::cerr) are switched off once.

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "imageio/dicom_internal.h"
#include "imageio/imageio.h"

#include <gdcmAttribute.h>
#include <gdcmDataSet.h>
#include <gdcmDicts.h>
#include <gdcmGlobal.h>
#include <gdcmFile.h>
#include <gdcmImage.h>
#include <gdcmImageReader.h>
#include <gdcmReader.h>
#include <gdcmSequenceOfItems.h>
#include <gdcmStringFilter.h>
#include <gdcmTrace.h>
#include <gdcmTransferSyntax.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <vector>

namespace {

int fail(char *eb, size_t el, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

int fail(char *eb, size_t el, int code, const char *fmt, ...)
{
    if (eb && el) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(eb, el, fmt, ap);
        va_end(ap);
    }
    return code;
}

std::once_flag quiet_once;

void quiet()
{
    std::call_once(quiet_once, [] {
        gdcm::Trace::SetDebug(false);
        gdcm::Trace::SetWarning(false);
        gdcm::Trace::SetError(false);
    });
}

// A string attribute's bytes, padding (spaces, NUL) trimmed; "" if absent.
std::string raw(const gdcm::DataSet &ds, uint16_t g, uint16_t e)
{
    gdcm::Tag t(g, e);
    if (!ds.FindDataElement(t))
        return "";
    const gdcm::DataElement &de = ds.GetDataElement(t);
    const gdcm::ByteValue *bv = de.GetByteValue();
    if (!bv || !bv->GetPointer())
        return "";
    std::string s(bv->GetPointer(), bv->GetLength());
    size_t b = 0, e2 = s.size();
    while (b < e2 && (s[b] == ' ' || s[b] == '\0'))
        b++;
    while (e2 > b && (s[e2 - 1] == ' ' || s[e2 - 1] == '\0'))
        e2--;
    return s.substr(b, e2 - b);
}

void copy(char *dst, size_t n, const std::string &s)
{
    size_t k = s.size() < n - 1 ? s.size() : n - 1;
    memcpy(dst, s.data(), k);
    dst[k] = '\0';
}

// Parses up to n backslash-separated decimal strings (DS / IS); returns how
// many parsed as finite numbers, stopping at the first that does not.
int numbers(const std::string &s, double *out, int n)
{
    int k = 0;
    const char *p = s.c_str();
    while (k < n && *p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !std::isfinite(v))
            return k;
        out[k++] = v;
        while (*end == ' ')
            end++;
        if (*end == '\\')
            end++;
        else if (*end)
            return k;
        p = end;
    }
    return k;
}

// An element's value as a sequence: what the reader parsed as one, or, in
// implicit VR, bytes that begin with an item tag (the structural walk has
// checked such bytes as a sequence; GetValueAsSQ on other bytes would try
// to parse them).
gdcm::SmartPointer<gdcm::SequenceOfItems> seq_of(const gdcm::DataElement &de)
{
    if (de.IsEmpty())
        return nullptr;
    if (const gdcm::SequenceOfItems *sq = dynamic_cast<const gdcm::SequenceOfItems *>(&de.GetValue()))
        return const_cast<gdcm::SequenceOfItems *>(sq);
    const gdcm::ByteValue *bv = de.GetByteValue();
    if (de.GetVR() == gdcm::VR::INVALID && bv && bv->GetPointer() && bv->GetLength() >= 8) {
        const unsigned char *b = reinterpret_cast<const unsigned char *>(bv->GetPointer());
        if (b[0] == 0xfe && b[1] == 0xff && b[2] == 0x00 && b[3] == 0xe0)
            return de.GetValueAsSQ();
    }
    return nullptr;
}

// The first item of a sequence, or NULL.
const gdcm::DataSet *first_item(const gdcm::DataSet &ds, uint16_t g, uint16_t e)
{
    gdcm::Tag t(g, e);
    if (!ds.FindDataElement(t))
        return nullptr;
    gdcm::SmartPointer<gdcm::SequenceOfItems> sq = seq_of(ds.GetDataElement(t));
    if (!sq || sq->GetNumberOfItems() < 1)
        return nullptr;
    return &sq->GetItem(1).GetNestedDataSet();
}

// A US attribute through GDCM's string filter (it knows the byte order).
int us(const gdcm::StringFilter &sf, const gdcm::DataSet &ds, uint16_t g, uint16_t e, int dflt)
{
    gdcm::Tag t(g, e);
    if (!ds.FindDataElement(t) || ds.GetDataElement(t).IsEmpty())
        return dflt;
    std::string s = sf.ToString(t);
    double v;
    return numbers(s, &v, 1) == 1 && v >= 0 && v <= 65535 ? (int)v : -1;
}

// The attributes of one (possibly nested) dataset that describe geometry
// and intensities; a nested functional group overrides what it holds.
void geometry(const gdcm::DataSet &ds, img__dcm *h)
{
    double v[6];
    if (numbers(raw(ds, 0x0020, 0x0032), v, 3) == 3) {
        memcpy(h->ipp, v, sizeof h->ipp);
        h->present |= IMG__DCM_IPP;
    }
    if (numbers(raw(ds, 0x0020, 0x0037), v, 6) == 6) {
        memcpy(h->iop, v, sizeof h->iop);
        h->present |= IMG__DCM_IOP;
    }
    if (numbers(raw(ds, 0x0028, 0x0030), v, 2) == 2) {
        memcpy(h->ps, v, sizeof h->ps);
        h->present |= IMG__DCM_PS;
    }
    if (numbers(raw(ds, 0x0018, 0x1164), v, 2) == 2) {
        memcpy(h->ips, v, sizeof h->ips);
        h->present |= IMG__DCM_IPS;
    }
    if (numbers(raw(ds, 0x0018, 0x0050), v, 1) == 1) {
        h->thickness = v[0];
        h->present |= IMG__DCM_THICK;
    }
    double s, i;
    if (numbers(raw(ds, 0x0028, 0x1053), &s, 1) == 1 && numbers(raw(ds, 0x0028, 0x1052), &i, 1) == 1) {
        h->slope = s;
        h->intercept = i;
        h->present |= IMG__DCM_RESCALE;
    }
    double c, w;
    if (numbers(raw(ds, 0x0028, 0x1050), &c, 1) == 1 && numbers(raw(ds, 0x0028, 0x1051), &w, 1) == 1) {
        h->wc = c;
        h->ww = w;
        h->present |= IMG__DCM_WINDOW;
    }
    if (raw(ds, 0x0028, 0x1056) == "SIGMOID")
        h->present |= IMG__DCM_VOILUT;
}

// The functional groups of an enhanced multi-frame object: the shared one
// (orientation, pixel measures, rescale) and, per frame, the position and
// the rescale.
int functional_groups(const gdcm::DataSet &ds, img__dcm *h, const char *name, char *eb, size_t el)
{
    // group sequences inside a functional group item
    const uint16_t PLANE_POS = 0x9113, PLANE_ORI = 0x9116, PIX_MEAS = 0x9110, PIX_VALUE = 0x9145;
    auto group = [&](const gdcm::DataSet &item, img__dcm *out) {
        if (const gdcm::DataSet *d = first_item(item, 0x0020, PLANE_POS))
            geometry(*d, out);
        if (const gdcm::DataSet *d = first_item(item, 0x0020, PLANE_ORI))
            geometry(*d, out);
        if (const gdcm::DataSet *d = first_item(item, 0x0028, PIX_MEAS))
            geometry(*d, out);
        if (const gdcm::DataSet *d = first_item(item, 0x0028, PIX_VALUE))
            geometry(*d, out);
    };
    if (const gdcm::DataSet *shared = first_item(ds, 0x5200, 0x9229))
        group(*shared, h);
    gdcm::Tag per(0x5200, 0x9230);
    if (!ds.FindDataElement(per))
        return IMG_OK;
    gdcm::SmartPointer<gdcm::SequenceOfItems> sq = seq_of(ds.GetDataElement(per));
    if (!sq)
        return IMG_OK;
    size_t n = sq->GetNumberOfItems();
    if ((int)n != h->frames)
        return fail(eb, el, IMG_FORMAT,
                    "%s: PerFrameFunctionalGroupsSequence has %zu items for NumberOfFrames %d",
                    name, n, h->frames);
    h->fipp = (double *)malloc(3 * n * sizeof(double));
    h->frescale = (double *)malloc(2 * n * sizeof(double));
    if (!h->fipp || !h->frescale)
        return fail(eb, el, IMG_NOMEM, "%s: out of memory", name);
    int have_pos = 1;
    for (size_t f = 0; f < n; f++) {
        img__dcm one = *h;
        one.present &= ~(unsigned)IMG__DCM_IPP;
        one.fipp = one.frescale = nullptr;
        group(sq->GetItem(f + 1).GetNestedDataSet(), &one);
        if (!(one.present & IMG__DCM_IPP))
            have_pos = 0;
        memcpy(h->fipp + 3 * f, one.ipp, 3 * sizeof(double));
        h->frescale[2 * f] = one.present & IMG__DCM_RESCALE ? one.slope : 1.0;
        h->frescale[2 * f + 1] = one.present & IMG__DCM_RESCALE ? one.intercept : 0.0;
        if (f == 0) {
            // what the first frame says about orientation and spacing holds
            // when the shared group did not say it
            unsigned take = one.present & ~h->present & (IMG__DCM_IOP | IMG__DCM_PS | IMG__DCM_THICK);
            if (take & IMG__DCM_IOP)
                memcpy(h->iop, one.iop, sizeof h->iop);
            if (take & IMG__DCM_PS)
                memcpy(h->ps, one.ps, sizeof h->ps);
            if (take & IMG__DCM_THICK)
                h->thickness = one.thickness;
            h->present |= take;
        }
        if (one.present & IMG__DCM_RESCALE)
            h->present |= IMG__DCM_RESCALE;
    }
    if (!have_pos) {
        free(h->fipp);
        h->fipp = nullptr;
    } else {
        memcpy(h->ipp, h->fipp, sizeof h->ipp);
        h->present |= IMG__DCM_IPP;
    }
    return IMG_OK;
}

// GDCM's attribute reader asserts when an element's explicit VR is not
// compatible with its dictionary VR (fuzz_dicom found Columns written as
// UI): every public element, nested ones too, is checked first.
int check_vrs(const gdcm::DataSet &ds, const gdcm::Dicts &dicts, int depth, const char *name,
              char *eb, size_t el)
{
    if (depth > 32)
        return fail(eb, el, IMG_FORMAT, "%s: sequences nested too deep", name);
    for (gdcm::DataSet::ConstIterator it = ds.Begin(); it != ds.End(); ++it) {
        const gdcm::DataElement &de = *it;
        const gdcm::Tag &t = de.GetTag();
        gdcm::VR vr = de.GetVR();
        if (!t.IsPrivate() && vr != gdcm::VR::INVALID) {
            const gdcm::DictEntry &e = dicts.GetDictEntry(t);
            gdcm::VR want = e.GetVR();
            if (want != gdcm::VR::INVALID && want != gdcm::VR::UN && !want.Compatible(vr))
                return fail(eb, el, IMG_FORMAT, "%s: element (%04x,%04x) %s has VR %s, the "
                            "standard says %s: corrupt", name, t.GetGroup(), t.GetElement(),
                            e.GetKeyword() ? e.GetKeyword() : "", gdcm::VR::GetVRString(vr),
                            gdcm::VR::GetVRString(want));
        }
        gdcm::SmartPointer<gdcm::SequenceOfItems> sq = seq_of(de);
        if (sq)
            for (size_t i = 1; i <= sq->GetNumberOfItems(); i++) {
                int rc = check_vrs(sq->GetItem(i).GetNestedDataSet(), dicts, depth + 1, name, eb,
                                   el);
                if (rc)
                    return rc;
            }
    }
    return IMG_OK;
}

int header(const gdcm::File &file, img__dcm *h, const char *name, char *eb, size_t el)
{
    const gdcm::DataSet &ds = file.GetDataSet();
    const gdcm::FileMetaInformation &fmi = file.GetHeader();
    if (int rc = check_vrs(ds, gdcm::Global::GetInstance().GetDicts(), 0, name, eb, el))
        return rc;
    gdcm::StringFilter sf;
    sf.SetFile(file);
    std::string sop = raw(ds, 0x0008, 0x0016);
    if (sop.empty())
        sop = raw(fmi, 0x0002, 0x0002);
    copy(h->sop_class, sizeof h->sop_class, sop);
    copy(h->sop_uid, sizeof h->sop_uid, raw(ds, 0x0008, 0x0018));
    copy(h->study_uid, sizeof h->study_uid, raw(ds, 0x0020, 0x000d));
    copy(h->series_uid, sizeof h->series_uid, raw(ds, 0x0020, 0x000e));
    copy(h->frame_uid, sizeof h->frame_uid, raw(ds, 0x0020, 0x0052));
    copy(h->modality, sizeof h->modality, raw(ds, 0x0008, 0x0060));
    copy(h->body_part, sizeof h->body_part, raw(ds, 0x0018, 0x0015));
    copy(h->study_date, sizeof h->study_date, raw(ds, 0x0008, 0x0020));
    copy(h->series_desc, sizeof h->series_desc, raw(ds, 0x0008, 0x103e));
    copy(h->manufacturer, sizeof h->manufacturer, raw(ds, 0x0008, 0x0070));
    copy(h->accession, sizeof h->accession, raw(ds, 0x0008, 0x0050));
    copy(h->photometric, sizeof h->photometric, raw(ds, 0x0028, 0x0004));
    copy(h->image_type, sizeof h->image_type, raw(ds, 0x0008, 0x0008));
    const gdcm::TransferSyntax &ts = fmi.GetDataSetTransferSyntax();
    copy(h->tsyntax, sizeof h->tsyntax, raw(fmi, 0x0002, 0x0010));
    const char *tsn = gdcm::TransferSyntax::GetTSString(ts);
    copy(h->tsyntax_name, sizeof h->tsyntax_name, tsn ? tsn : "");
    h->rows = us(sf, ds, 0x0028, 0x0010, 0);
    h->cols = us(sf, ds, 0x0028, 0x0011, 0);
    h->samples = us(sf, ds, 0x0028, 0x0002, 1);
    h->bits_alloc = us(sf, ds, 0x0028, 0x0100, 0);
    h->bits_stored = us(sf, ds, 0x0028, 0x0101, h->bits_alloc);
    h->pixel_rep = us(sf, ds, 0x0028, 0x0103, 0);
    h->high_bit = us(sf, ds, 0x0028, 0x0102, h->bits_stored - 1);
    h->planar = us(sf, ds, 0x0028, 0x0006, 0);
    double v = 1;
    if (numbers(raw(ds, 0x0028, 0x0008), &v, 1) != 1)
        v = 1;
    h->frames = v >= 1 && v <= 1e6 ? (int)v : 0;
    if (h->frames < 1 || v != std::floor(v))
        return fail(eb, el, IMG_FORMAT, "%s: NumberOfFrames '%s' is not a positive count", name,
                    raw(ds, 0x0028, 0x0008).c_str());
    h->instance = numbers(raw(ds, 0x0020, 0x0013), &v, 1) == 1 && std::fabs(v) < 1e9 ? (int)v : 0;
    if (h->rows < 0 || h->cols < 0 || h->samples < 0 || h->bits_alloc < 0)
        return fail(eb, el, IMG_FORMAT, "%s: Rows, Columns, SamplesPerPixel or BitsAllocated "
                    "cannot be read", name);
    h->slope = 1;
    geometry(ds, h);
    if (ds.FindDataElement(gdcm::Tag(0x7fe0, 0x0010)) ||
        ds.FindDataElement(gdcm::Tag(0x7fe0, 0x0008)))
        h->present |= IMG__DCM_PIXELS;
    return functional_groups(ds, h, name, eb, el);
}

// Grey values out of GDCM's decoded buffer.
template <typename T>
void grey(const char *buf, size_t npix, int spp, int planar, const char *pi, float *out)
{
    const T *p = reinterpret_cast<const T *>(buf);
    if (spp == 1) {
        for (size_t i = 0; i < npix; i++)
            out[i] = (float)p[i];
        return;
    }
    int ybr = !strncmp(pi, "YBR", 3);
    for (size_t i = 0; i < npix; i++) {
        double a, b, c;
        if (planar) {
            a = p[i], b = p[npix + i], c = p[2 * npix + i];
        } else {
            a = p[3 * i], b = p[3 * i + 1], c = p[3 * i + 2];
        }
        out[i] = ybr ? (float)a : (float)(0.299 * a + 0.587 * b + 0.114 * c);
    }
}

int pixels(const char *name, gdcm::ImageReader &ir, const img__dcm *h, float **out,
           size_t max_values, char *eb, size_t el)
{
    const gdcm::Image &img = ir.GetImage();
    const gdcm::PixelFormat &pf = img.GetPixelFormat();
    unsigned nd = img.GetNumberOfDimensions();
    size_t cols = img.GetDimension(0), rows = img.GetDimension(1);
    size_t frames = nd > 2 ? img.GetDimension(2) : 1;
    if ((int)cols != h->cols || (int)rows != h->rows || (int)frames != h->frames)
        return fail(eb, el, IMG_FORMAT, "%s: the pixel data is %zu x %zu x %zu, the header says "
                    "Columns %d, Rows %d, NumberOfFrames %d", name, cols, rows, frames, h->cols,
                    h->rows, h->frames);
    size_t npix = cols * rows * frames;
    if (max_values && npix > max_values)
        return fail(eb, el, IMG_TOOBIG, "%s: %zu pixels, more than the limit of %zu", name, npix,
                    max_values);
    int spp = pf.GetSamplesPerPixel();
    const char *pi = gdcm::PhotometricInterpretation::GetPIString(
        img.GetPhotometricInterpretation().GetType());
    if (!pi)
        pi = "";
    if (spp != 1 && spp != 3)
        return fail(eb, el, IMG_UNSUPPORTED, "%s: SamplesPerPixel %d (expected 1 or 3)", name, spp);
    if (!strcmp(pi, "PALETTE COLOR") || !strcmp(pi, "YBR_PARTIAL_420"))
        return fail(eb, el, IMG_UNSUPPORTED, "%s: PhotometricInterpretation %s is not supported",
                    name, pi);
    size_t len = img.GetBufferLength();
    size_t bytes = 0;
    switch (pf.GetScalarType()) {
    case gdcm::PixelFormat::UINT8: case gdcm::PixelFormat::INT8: bytes = 1; break;
    case gdcm::PixelFormat::UINT16: case gdcm::PixelFormat::INT16: bytes = 2; break;
    case gdcm::PixelFormat::UINT32: case gdcm::PixelFormat::INT32:
    case gdcm::PixelFormat::FLOAT32: bytes = 4; break;
    case gdcm::PixelFormat::FLOAT64: bytes = 8; break;
    default:
        return fail(eb, el, IMG_UNSUPPORTED, "%s: pixels of type %s (BitsAllocated %d) are not "
                    "supported", name, pf.GetScalarTypeAsString(), h->bits_alloc);
    }
    // YBR_FULL_422 kept subsampled: two luma samples share one Cb, Cr pair
    int sub422 = spp == 3 && !strcmp(pi, "YBR_FULL_422") && cols % 2 == 0 &&
                 len == npix * 2 * bytes;
    if (!sub422 && len != npix * (size_t)spp * bytes)
        return fail(eb, el, IMG_FORMAT, "%s: the decoded pixel data is %zu bytes, expected %zu",
                    name, len, npix * (size_t)spp * bytes);
    // Native (not encapsulated) pixel data must hold every pixel the
    // header declares: GDCM pads a short element rather than failing.
    const gdcm::File &file = ir.GetFile();
    const gdcm::DataSet &ds = file.GetDataSet();
    gdcm::Tag pd(0x7fe0, 0x0010);
    if (!file.GetHeader().GetDataSetTransferSyntax().IsEncapsulated() && ds.FindDataElement(pd)) {
        const gdcm::DataElement &de = ds.GetDataElement(pd);
        const gdcm::ByteValue *bv = de.GetByteValue();
        size_t per = !strcmp(h->photometric, "YBR_FULL_422") ? 2 : (size_t)spp;
        size_t need = (npix * per * (size_t)(h->bits_alloc > 0 ? h->bits_alloc : 8) + 7) / 8;
        size_t have = bv ? (size_t)(uint32_t)bv->GetLength() : 0;
        size_t vl = de.GetVL().IsUndefined() ? 0 : (size_t)(uint32_t)de.GetVL();
        if (have < need || vl < need)
            return fail(eb, el, IMG_FORMAT, "%s: PixelData holds %zu bytes, Rows %d x Columns %d x "
                        "NumberOfFrames %d x SamplesPerPixel %d at BitsAllocated %d need %zu: "
                        "truncated", name, have < vl ? have : vl, h->rows, h->cols, h->frames, spp,
                        h->bits_alloc, need);
    }
    std::vector<char> buf(len);
    if (!img.GetBuffer(buf.data()))
        return fail(eb, el, IMG_FORMAT, "%s: the pixel data cannot be decoded (%s): truncated or "
                    "corrupt", name, h->tsyntax_name[0] ? h->tsyntax_name : h->tsyntax);
    float *f = (float *)malloc(npix * sizeof(float) + 1);
    if (!f)
        return fail(eb, el, IMG_NOMEM, "%s: out of memory for %zu pixels", name, npix);
    int planar = spp == 3 && img.GetPlanarConfiguration() == 1;
    if (sub422) {
        if (bytes != 1) {
            free(f);
            return fail(eb, el, IMG_UNSUPPORTED, "%s: YBR_FULL_422 at BitsAllocated %d", name,
                        h->bits_alloc);
        }
        const uint8_t *p = reinterpret_cast<const uint8_t *>(buf.data());
        for (size_t i = 0; i < npix; i += 2) { // Y1 Y2 Cb Cr
            f[i] = p[2 * i];
            f[i + 1] = p[2 * i + 1];
        }
        *out = f;
        return IMG_OK;
    }
    switch (pf.GetScalarType()) {
    case gdcm::PixelFormat::UINT8: grey<uint8_t>(buf.data(), npix, spp, planar, pi, f); break;
    case gdcm::PixelFormat::INT8: grey<int8_t>(buf.data(), npix, spp, planar, pi, f); break;
    case gdcm::PixelFormat::UINT16: grey<uint16_t>(buf.data(), npix, spp, planar, pi, f); break;
    case gdcm::PixelFormat::INT16: grey<int16_t>(buf.data(), npix, spp, planar, pi, f); break;
    case gdcm::PixelFormat::UINT32: grey<uint32_t>(buf.data(), npix, spp, planar, pi, f); break;
    case gdcm::PixelFormat::INT32: grey<int32_t>(buf.data(), npix, spp, planar, pi, f); break;
    case gdcm::PixelFormat::FLOAT32: grey<float>(buf.data(), npix, spp, planar, pi, f); break;
    default: grey<double>(buf.data(), npix, spp, planar, pi, f); break;
    }
    for (size_t i = 0; i < npix; i++)
        if (!std::isfinite(f[i])) {
            free(f);
            return fail(eb, el, IMG_FORMAT, "%s: pixel %zu is not finite", name, i);
        }
    *out = f;
    return IMG_OK;
}

int read_any(const char *path, const void *mem, size_t len, const char *name, img__dcm *h,
             float **out, size_t max_values, char *eb, size_t el)
{
    // The whole file in memory: the structure is checked before GDCM reads
    // it (dicom_walk.c), and GDCM then reads exactly those bytes.
    std::string bytes;
    if (path) {
        std::ifstream fin(path, std::ios::binary);
        if (!fin)
            return fail(eb, el, IMG_IO, "%s: cannot open: %s", name, strerror(errno));
        std::ostringstream ss;
        ss << fin.rdbuf();
        if (fin.bad())
            return fail(eb, el, IMG_IO, "%s: read error", name);
        bytes = ss.str();
    } else {
        bytes.assign((const char *)mem, len);
    }
    int wrc = img__dcm_walk(reinterpret_cast<const unsigned char *>(bytes.data()), bytes.size(),
                            name, eb, el);
    if (wrc)
        return wrc;
    std::istringstream sin(bytes);
    std::istream *in = &sin;
    len = bytes.size();
    // The header first, up to the pixel data: the sizes are checked before
    // anything is decoded.
    gdcm::Reader r;
    r.SetStream(*in);
    if (!r.ReadUpToTag(gdcm::Tag(0x7fe0, 0x0010)))
        return fail(eb, el, IMG_FORMAT, "%s: not a DICOM file, or its header is corrupt", name);
    int rc = header(r.GetFile(), h, name, eb, el);
    if (rc || !out)
        return rc;
    if (!(h->present & IMG__DCM_PIXELS))
        return fail(eb, el, IMG_FORMAT, "%s: no PixelData (SOPClassUID %s): not an image", name,
                    h->sop_class);
    if (h->rows < 1 || h->cols < 1)
        return fail(eb, el, IMG_FORMAT, "%s: Rows %d, Columns %d: an empty image", name, h->rows,
                    h->cols);
    // GDCM asserts on an RT Dose object with one frame (its spacing code
    // reads GridFrameOffsetVector as NumberOfFrames): doses are not images
    // medsem encodes anyway.
    if (!strcmp(h->sop_class, "1.2.840.10008.5.1.4.1.1.481.2"))
        return fail(eb, el, IMG_UNSUPPORTED, "%s: an RT Dose (SOPClassUID %s) is not an image "
                    "medsem reads", name, h->sop_class);
    // GDCM asserts on some values of the image pixel module rather than
    // failing: they are checked here first (PS3.3 C.7.6.3).
    if (h->samples != 1 && h->samples != 3)
        return fail(eb, el, IMG_UNSUPPORTED, "%s: SamplesPerPixel %d (expected 1 or 3)", name,
                    h->samples);
    int ba = h->bits_alloc;
    if (ba != 1 && ba != 8 && ba != 16 && ba != 32 && ba != 64)
        return fail(eb, el, IMG_UNSUPPORTED, "%s: BitsAllocated %d (expected 1, 8, 16, 32 or 64)",
                    name, ba);
    if (h->bits_stored < 1 || h->bits_stored > ba)
        return fail(eb, el, IMG_FORMAT, "%s: BitsStored %d with BitsAllocated %d", name,
                    h->bits_stored, ba);
    if (h->high_bit < h->bits_stored - 1 || h->high_bit >= ba)
        return fail(eb, el, IMG_FORMAT, "%s: HighBit %d with BitsStored %d, BitsAllocated %d", name,
                    h->high_bit, h->bits_stored, ba);
    if (h->pixel_rep != 0 && h->pixel_rep != 1)
        return fail(eb, el, IMG_FORMAT, "%s: PixelRepresentation %d (expected 0 or 1)", name,
                    h->pixel_rep);
    if (h->samples == 3 && h->planar != 0 && h->planar != 1)
        return fail(eb, el, IMG_FORMAT, "%s: PlanarConfiguration %d (expected 0 or 1)", name,
                    h->planar);
    static const char *const PI[] = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL",
                                     "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422"};
    int known = 0;
    for (const char *p : PI)
        known |= !strcmp(h->photometric, p);
    if (!known)
        return fail(eb, el, IMG_UNSUPPORTED, "%s: PhotometricInterpretation '%s' is not supported",
                    name, h->photometric);
    if ((h->samples == 1) != (strncmp(h->photometric, "MONOCHROME", 10) == 0))
        return fail(eb, el, IMG_FORMAT, "%s: PhotometricInterpretation %s with SamplesPerPixel %d",
                    name, h->photometric, h->samples);
    size_t npix = (size_t)h->rows * (size_t)h->cols * (size_t)h->frames;
    if (max_values && npix > max_values)
        return fail(eb, el, IMG_TOOBIG, "%s: Rows %d x Columns %d x NumberOfFrames %d is more than "
                    "the limit of %zu pixels", name, h->rows, h->cols, h->frames, max_values);
    in->clear();
    in->seekg(0);
    gdcm::ImageReader ir;
    ir.SetStream(*in);
    if (!ir.Read())
        return fail(eb, el, IMG_FORMAT, "%s: the image cannot be read (%s): truncated, corrupt "
                    "or an unsupported transfer syntax", name,
                    h->tsyntax_name[0] ? h->tsyntax_name : h->tsyntax);
    // GDCM pads an element the file cuts short; a file shorter than what
    // it declares (deflated ones aside) is truncated.
    const gdcm::File &f = ir.GetFile();
    const gdcm::TransferSyntax &ts = f.GetHeader().GetDataSetTransferSyntax();
    if (!ts.IsEncoded()) {
        uint64_t declared = (uint64_t)(uint32_t)f.GetHeader().GetFullLength() +
                            (uint64_t)(uint32_t)(ts.IsExplicit()
                                ? f.GetDataSet().GetLength<gdcm::ExplicitDataElement>()
                                : f.GetDataSet().GetLength<gdcm::ImplicitDataElement>());
        uint64_t size = len;
        if (size < declared)
            return fail(eb, el, IMG_FORMAT, "%s: the file ends %llu bytes before the end its "
                        "elements declare (PixelData cut short): truncated", name,
                        (unsigned long long)(declared - size));
    }
    return pixels(name, ir, h, out, max_values, eb, el);
}

} // namespace

extern "C" int img__dcm_read(const char *path, const void *mem, size_t len, const char *name,
                             img__dcm *h, float **pixels_out, size_t max_values, char *errbuf,
                             size_t errlen)
{
    if (!name)
        name = path ? path : "(memory)";
    memset(h, 0, sizeof *h);
    if (pixels_out)
        *pixels_out = nullptr;
    quiet();
    int rc;
    try {
        rc = read_any(path, mem, len, name, h, pixels_out, max_values, errbuf, errlen);
    } catch (const std::bad_alloc &) {
        rc = fail(errbuf, errlen, IMG_NOMEM, "%s: out of memory", name);
    } catch (const std::exception &e) {
        rc = fail(errbuf, errlen, IMG_FORMAT, "%s: cannot be read as DICOM (%s)", name, e.what());
    } catch (...) {
        rc = fail(errbuf, errlen, IMG_FORMAT, "%s: cannot be read as DICOM", name);
    }
    if (rc) {
        img__dcm_free(h);
        if (pixels_out && *pixels_out) {
            free(*pixels_out);
            *pixels_out = nullptr;
        }
    }
    return rc;
}

extern "C" void img__dcm_free(img__dcm *h)
{
    if (!h)
        return;
    free(h->fipp);
    free(h->frescale);
    h->fipp = h->frescale = nullptr;
}
