#!/usr/bin/env bash
# gen-index-media.sh OUTDIR -- the small corpus of tests/container_index.rs: files whose
# container index spans several 16 KiB pieces, far from the file's first and last piece
# where that is how the format goes, so that a test can tell "the index was prefetched" from
# "the head and tail were".
#
# Produces (~12 MiB in all, a few seconds on 2 cores):
#   OUTDIR/index-media/movie-moovend.mp4  120 s of 160x90@60 all-intra H.264 + AAC; the moov
#                                         (~100 KiB: ~14 B per sample) at the END
#   OUTDIR/index-media/movie.mkv          the same streams in Matroska: Cues (one point per
#                                         keyframe, every frame is one) at the END
#   OUTDIR/index-media/big.zip            1500 stored 2 KiB members with long names: central
#                                         directory ~140 KiB before the EOCD
# Deterministic: fixed seeds, bitexact muxing, single-threaded x264, fixed mtimes.
set -euo pipefail

OUT=${1:?usage: gen-index-media.sh OUTDIR}
EPOCH=1700000000
export TZ=UTC LC_ALL=C SOURCE_DATE_EPOCH=$EPOCH

for t in ffmpeg zip python3; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
mkdir -p "$OUT/index-media" "$OUT/members"
cd "$OUT/index-media"

FFBE=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1)

if [ ! -s movie-moovend.mp4 ]; then
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc=size=160x90:rate=60:duration=120" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=120" \
    -map 0:v -map 1:a \
    -c:v libx264 -preset ultrafast -g 1 -b:v 300k -pix_fmt yuv420p -threads 1 \
    -c:a aac -b:a 32k -ac 1 \
    "${FFBE[@]}" -f mp4 movie-moovend.mp4.part
  mv movie-moovend.mp4.part movie-moovend.mp4
fi

if [ ! -s movie.mkv ]; then
  ffmpeg -hide_banner -loglevel error -y -i movie-moovend.mp4 -map 0 -c copy \
    "${FFBE[@]}" -f matroska movie.mkv.part
  mv movie.mkv.part movie.mkv
fi

if [ ! -s big.zip ]; then
  python3 - "$OUT/members" "$EPOCH" <<'PY'
import os, random, sys
root, epoch = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20240606)
for i in range(1500):
    p = os.path.join(root, "member-with-a-long-name-to-grow-the-central-directory-%04d.bin" % i)
    with open(p, "wb") as f:
        f.write(rnd.randbytes(2048))
    os.utime(p, (epoch, epoch))
PY
  rm -f big.zip.part
  (cd "$OUT/members" && ls | sort | zip -X -0 -q -@ "$OUT/index-media/big.zip.part")
  mv big.zip.part big.zip
fi
touch -d @$EPOCH ./*
