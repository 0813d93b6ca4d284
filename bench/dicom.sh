#!/usr/bin/env bash
# Read + preprocess throughput of a 512 x 512 x 300 CT series (300 files,
# explicit VR little endian, RescaleIntercept -1024) against the NIfTI of the
# same volume (.nii and .nii.gz), in one run, with models/default's
# preprocessing (one thread).  Needs python3-pydicom and python3-numpy to
# write the inputs (scripts/setup.sh installs pydicom).
#
#   bash bench/dicom.sh [BUILD_DIR] [REPEATS]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$top/_build}
R=${2:-5}
make -C "$B" bench/dicom >/dev/null
T=$(mktemp -d /tmp/medsem-bench-dicom.XXXXXX)
trap 'rm -rf "$T"' EXIT
/usr/bin/python3 - "$T" <<'PY'
import gzip, os, struct, sys
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
out = sys.argv[1]
nx, ny, nz, dc, dr, dz = 512, 512, 300, 0.7, 0.7, 1.0
rng = np.random.default_rng(1)
z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                      indexing="ij")
body = (x * x / 0.8 + y * y / 0.5) < 1
v = np.where(body, 40 - 900 * ((x * x / 0.3 + y * y / 0.3) < 0.5), -1000)
v = (v + rng.normal(0, 20, v.shape)).astype(np.int16)  # [nz, ny, nx], HU
origin = np.array([-dc * nx / 2, -dr * ny / 2, -dz * nz / 2])
hdr = bytearray(348)
struct.pack_into("<i", hdr, 0, 348)
struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
struct.pack_into("<hh", hdr, 70, 4, 16)
struct.pack_into("<8f", hdr, 76, 1, dc, dr, dz, 0, 0, 0, 0)
struct.pack_into("<f", hdr, 108, 352.0)
struct.pack_into("<ff", hdr, 112, 1.0, 0.0)
struct.pack_into("<hh", hdr, 252, 0, 1)
A = [[-dc, 0, 0, -origin[0]], [0, -dr, 0, -origin[1]], [0, 0, dz, origin[2]]]
for r in range(3):
    struct.pack_into("<4f", hdr, 280 + 16 * r, *A[r])
hdr[344:348] = b"n+1\0"
raw = bytes(hdr) + b"\0" * 4 + v.astype("<i2").tobytes()
open(os.path.join(out, "ct.nii"), "wb").write(raw)
with gzip.open(os.path.join(out, "ct.nii.gz"), "wb", compresslevel=6) as f:
    f.write(raw)
os.makedirs(os.path.join(out, "series"))
series, study = generate_uid(), generate_uid()
for k in range(nz):
    m = FileMetaDataset()
    m.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    m.MediaStorageSOPInstanceUID = generate_uid()
    m.TransferSyntaxUID = ExplicitVRLittleEndian
    d = Dataset()
    d.file_meta = m
    d.is_little_endian, d.is_implicit_VR = True, False
    d.SOPClassUID, d.SOPInstanceUID = m.MediaStorageSOPClassUID, m.MediaStorageSOPInstanceUID
    d.Modality, d.StudyInstanceUID, d.SeriesInstanceUID = "CT", study, series
    d.InstanceNumber = k + 1
    d.ImagePositionPatient = ["%.4f" % origin[0], "%.4f" % origin[1], "%.4f" % (origin[2] + k * dz)]
    d.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    d.PixelSpacing = ["%g" % dr, "%g" % dc]
    d.SliceThickness = "%g" % dz
    d.Rows, d.Columns, d.SamplesPerPixel = ny, nx, 1
    d.PhotometricInterpretation = "MONOCHROME2"
    d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 16, 12, 11, 0
    d.RescaleIntercept, d.RescaleSlope = "-1024", "1"
    d.PixelData = (v[k].astype(np.int32) + 1024).astype("<u2").tobytes()
    d.save_as(os.path.join(out, "series", "ct%04d.dcm" % k), write_like_original=False)
PY
echo "bench/dicom: 512 x 512 x 300 CT, read + preprocess to models/default's input, $R repeats, 1 thread"
"$B/bench/dicom" "$top/models/default" "$R" "$T/ct.nii" "$T/ct.nii.gz" "$T/series"
