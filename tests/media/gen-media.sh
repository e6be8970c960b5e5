#!/usr/bin/env bash
# gen-media.sh OUTDIR -- the media/archive corpus of tests/media_tools.rs: a small copy of the
# lab's clients/gen-media.sh (same recipes, same fixed seeds and mtimes), sized so that the whole
# corpus is made in well under a minute on 2 cores instead of ~5 minutes.
#
# Produces:
#   OUTDIR/media/movie-moovend.mp4  H.264/AAC, 36 s, ~73 MiB, moov atom at the END (ffmpeg default)
#   OUTDIR/media/movie.mkv          the first 8 s of the same streams remuxed to Matroska (Cues at the end)
#   OUTDIR/media/big.zip            Info-ZIP of tree/ (deflate level 6: the random members end up stored)
#   OUTDIR/media/big.tar            GNU tar of tree/ (uncompressed)
#   OUTDIR/media/big.iso            ISO9660 + RockRidge + Joliet image of tree/ (xorriso)
#   OUTDIR/media/big.7z             7-Zip LZMA2 -mx=1 (solid) of tree/
#   OUTDIR/tree/                    320 files d00..d03/f0000..f0319 (16-464 KiB; every 10th is text), ~75 MiB
#   OUTDIR/MANIFEST.sha1            sha1 of every file under media/ and of the probe members
#
# OUTDIR/media/ is the torrent's payload (its NAME is "media"); tree/ is the archives' source.
# Differences from the lab's script, all for speed: 640x360 x264 "ultrafast" at 16 Mb/s (noise
# keeps the bitrate real) instead of 1280x720 "veryfast" at 8.5 Mb/s, 36 s instead of 180 s (still
# over 64 MiB, so that reading it whole would fetch hundreds of 256 KiB pieces), no faststart or
# cues-at-front variants, and 320 tree files instead of 1000.
# Deterministic like the lab's: fixed seeds, bitexact muxing, fixed mtimes, SOURCE_DATE_EPOCH,
# single-threaded x264.
set -euo pipefail

OUT=${1:?usage: gen-media.sh OUTDIR}
DUR=36                   # seconds of video: ~2 MiB/s → ~73 MiB
EPOCH=1700000000         # fixed mtime for all tree files / archive entries
export TZ=UTC LC_ALL=C SOURCE_DATE_EPOCH=$EPOCH

for t in ffmpeg zip tar xorriso 7z python3 sha1sum; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
mkdir -p "$OUT/media"
cd "$OUT/media"

FFBE=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1)

# ---------------------------------------------------------------- (a) MP4, moov at the end
if [ ! -s movie-moovend.mp4 ]; then
  echo "[gen] movie-moovend.mp4 (${DUR}s 640x360@30 H.264 16 Mb/s + AAC 128k) ..."
  # x264 default GOP (keyint 250 = 8.33 s); -threads 1: x264 rate control with frame threads is
  # not bit-reproducible.
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc=size=640x360:rate=30:duration=${DUR},noise=alls=40:allf=t" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=${DUR}" \
    -map 0:v -map 1:a \
    -c:v libx264 -preset ultrafast -b:v 16000k -maxrate 16000k -bufsize 32000k -pix_fmt yuv420p -threads 1 \
    -c:a aac -b:a 128k -ac 2 \
    "${FFBE[@]}" -f mp4 movie-moovend.mp4.part
  mv movie-moovend.mp4.part movie-moovend.mp4
fi

# ---------------------------------------------------------------- (b) MKV, cues at the end
if [ ! -s movie.mkv ]; then
  echo "[gen] movie.mkv (first 8 s, cues at end) ..."
  ffmpeg -hide_banner -loglevel error -y -i movie-moovend.mp4 -map 0 -c copy -t 8 \
    "${FFBE[@]}" -f matroska movie.mkv.part
  mv movie.mkv.part movie.mkv
fi

# ---------------------------------------------------------------- (c) file tree + archives
cd "$OUT"
if [ ! -f tree/.done ]; then
  echo "[gen] tree/ (320 files) ..."
  rm -rf tree
  python3 - "$OUT/tree" "$EPOCH" <<'PY'
import os, random, sys
root, epoch = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20240601)
words = b"alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
for i in range(320):
    d = os.path.join(root, "d%02d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    size = 16384 + (i * 2654435761 % 2**32) * 458752 // 2**32      # 16 KiB .. 464 KiB
    if i % 10 == 0:   # compressible text member
        name = "f%04d.txt" % i
        parts, n, j = [], 0, 0
        while n < size:
            line = b"%04d:%08d %s %s %08x\n" % (i, j, rnd.choice(words), rnd.choice(words), rnd.getrandbits(32))
            parts.append(line); n += len(line); j += 1
        data = b"".join(parts)[:size]
    else:
        name = "f%04d.bin" % i
        data = rnd.randbytes(size)
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(data)
    os.utime(p, (epoch, epoch))
for k in range(4):
    os.utime(os.path.join(root, "d%02d" % k), (epoch, epoch))
os.utime(root, (epoch, epoch))
PY
  : > tree/.done                 # marker (excluded from every archive) -- create before fixing tree's mtime
  touch -d @$EPOCH tree
fi
MEMBERS=$(cd tree && find . -type f -name 'f*' | sed 's|^\./||' | sort)
DIRS=$(cd tree && ls -d d??)

if [ ! -s media/big.zip ]; then
  echo "[gen] big.zip ..."
  rm -f media/big.zip.part
  (cd tree && printf '%s\n' $MEMBERS | zip -X -D -q -@ ../media/big.zip.part)
  mv media/big.zip.part media/big.zip
fi
if [ ! -s media/big.tar ]; then
  echo "[gen] big.tar ..."
  tar --sort=name --mtime=@$EPOCH --owner=0 --group=0 --numeric-owner --format=gnu \
      -C tree -cf media/big.tar.part $DIRS
  mv media/big.tar.part media/big.tar
fi
if [ ! -s media/big.iso ]; then
  echo "[gen] big.iso ..."
  rm -f media/big.iso.part
  xorriso -as mkisofs -quiet -R -J -V BIGISO -m .done -o media/big.iso.part tree 2>/dev/null
  mv media/big.iso.part media/big.iso
fi
if [ ! -s media/big.7z ]; then
  echo "[gen] big.7z ..."
  rm -f media/big.7z.part
  (cd tree && 7z a -t7z -bd -bso0 -bsp0 -mx=1 -mmt=2 -mtc=off -mta=off ../media/big.7z.part $DIRS >/dev/null)
  mv media/big.7z.part media/big.7z
fi
# Fixed mtimes for the payload too, so that nothing in it depends on when it was made.
touch -d @$EPOCH media/*

echo "[gen] MANIFEST.sha1 ..."
(cd media && sha1sum movie-moovend.mp4 movie.mkv big.zip big.tar big.iso big.7z) > MANIFEST.sha1.part
sha1sum tree/d01/f0150.txt tree/d01/f0137.bin >> MANIFEST.sha1.part
mv MANIFEST.sha1.part MANIFEST.sha1
cat MANIFEST.sha1
