#!/usr/bin/env bash
# The data-and-weights step, run once by the Job in prepare-data.yaml (or by hand on any machine that
# mounts the volume) before any sweep is submitted. It leaves on the shared volume exactly what the
# paper presets read (rayjob.yaml passes these paths with --set):
#
#   data/div2k-flickr2k   DIV2K_train_HR + Flickr2K_HR, prepared for x4   (data.train)
#   data/div2k-val        DIV2K_valid_HR (100), prepared for x4            (data.val.DIV2K: selects checkpoints)
#   data/set5             Set5 HR, prepared for x4                         (data.test.Set5: reported)
#   data/set14            Set14 HR, prepared for x4                        (data.test.Set14: reported)
#   weights/RRDB_ESRGAN_x4.pth, weights/RRDB_PSNR_x4.pth, weights/vgg19-dcbb9e9d.pth
#
# Each source is used if already on the volume (raw/<name>/ or weights/<file>), else downloaded from
# its URL variable, else waited for while you copy it in (the log prints the two commands). Sources
# with a stable official URL have it as the default; the ESRGAN teachers and Set5/Set14 do not (Google
# Drive links and mirrors), so set their URLs in prepare-data.yaml or copy them in. Everything is
# idempotent: `trilevel data prepare` reuses a finished data set, present files are kept.
#
# Every download is checked before it is used: each URL variable has a <NAME>_BYTES and a <NAME>_SHA256
# (e.g. DIV2K_BYTES, DIV2K_SHA256), the size and SHA-256 of the file you trust, and both are required
# whenever the URL is set: the script refuses to start without them (before downloading anything), and
# a download of another size or digest is deleted, never unpacked. They are not shipped filled in: pin
# them from a copy you verified (`stat -c %s FILE`, `sha256sum FILE`). torchvision's VGG19 file name also
# carries its digest's first 8 hex digits (vgg19-dcbb9e9d.pth), which the pinned digest must start with.
# Files you copy in with kubectl are checked against the pins you set for them, if any.
set -euo pipefail

VOLUME=${TRILEVEL_VOLUME:-/mnt/trilevel}
SCALE=${SCALE:-4}
WAIT_SECONDS=${WAIT_SECONDS:-86400}
NAMESPACE=${POD_NAMESPACE:-<namespace>}
POD=${HOSTNAME:-<pod>}
DIV2K_URL=${DIV2K_URL-http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip}
DIV2K_VAL_URL=${DIV2K_VAL_URL-http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip}
FLICKR2K_URL=${FLICKR2K_URL-https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar}
VGG19_URL=${VGG19_URL-https://download.pytorch.org/models/vgg19-dcbb9e9d.pth}
SET5_URL=${SET5_URL:-}
SET14_URL=${SET14_URL:-}
ESRGAN_URL=${ESRGAN_URL:-}
PSNR_URL=${PSNR_URL:-}

SOURCES="SET5 SET14 ESRGAN PSNR VGG19 DIV2K DIV2K_VAL FLICKR2K"

check_pins() {  # every source with a URL has a size and a SHA-256 pinned: refuse to start otherwise
    local name url bytes sha missing=""
    for name in $SOURCES; do
        url=$(pinned "${name}_URL") bytes=$(pinned "${name}_BYTES") sha=$(pinned "${name}_SHA256")
        [ -n "$url" ] || continue
        if ! [[ "$bytes" =~ ^[1-9][0-9]*$ ]] || ! [[ "$sha" =~ ^[0-9a-f]{64}$ ]]; then
            missing="$missing ${name}_BYTES='$bytes' ${name}_SHA256='$sha'"
        fi
    done
    if [ "${VGG19_URL:-}" != "" ] && [[ "${VGG19_SHA256:-}" =~ ^[0-9a-f]{64}$ ]] && [[ "$VGG19_SHA256" != dcbb9e9d* ]]; then
        missing="$missing VGG19_SHA256='$VGG19_SHA256' (vgg19-dcbb9e9d.pth: its digest starts with dcbb9e9d)"
    fi
    if [ -n "$missing" ]; then
        echo "Downloads must be pinned before anything is fetched; not set or not valid:$missing." >&2
        echo "Set each to the size in bytes (stat -c %s FILE) and the SHA-256 (sha256sum FILE) of a copy you" >&2
        echo "verified, in the env of kuberay/prepare-data.yaml, or set the URL to \"\" and copy the source in" >&2
        echo "(deployment/README.md, step 5)." >&2
        exit 1
    fi
}

pinned() {  # the value of the variable named $1, empty if unset
    printf '%s' "${!1:-}"
}

verify() {  # FILE BYTES SHA256 WHAT: the file has that size and digest (no pin: nothing to check)
    local file=$1 bytes=$2 sha=$3 what=$4 size digest
    [ -n "$bytes$sha" ] || return 0
    size=$(stat -c %s "$file") || return 1
    if [ -n "$bytes" ] && [ "$size" != "$bytes" ]; then
        echo "$what: $file is $size bytes, pinned $bytes (${what}_BYTES): not used" >&2
        return 1
    fi
    digest=$(sha256sum "$file" | cut -d' ' -f1) || return 1
    if [ -n "$sha" ] && [ "$digest" != "$sha" ]; then
        echo "$what: $file has SHA-256 $digest, pinned $sha (${what}_SHA256): not used" >&2
        return 1
    fi
    echo "$what: $size bytes, SHA-256 $digest as pinned"
}

download() {  # URL FILE NAME: to FILE.part, checked against NAME's pins, renamed only when they match
    local url=$1 file=$2 name=$3
    python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$file.part" \
        || { rm -f "$file.part"; return 1; }
    verify "$file.part" "$(pinned "${name}_BYTES")" "$(pinned "${name}_SHA256")" "$name" \
        || { rm -f "$file.part"; return 1; }
    mv "$file.part" "$file"
}

wait_for() {  # PATH (relative to the volume) and what it is: poll until it exists
    local path=$1 what=$2 waited=0
    echo "Waiting for $what at $VOLUME/$path. Copy it in from your machine, then move it into place:"
    echo "  kubectl -n $NAMESPACE cp ./$(basename "$path") $POD:$VOLUME/$path.incoming -c prepare"
    echo "  kubectl -n $NAMESPACE exec $POD -c prepare -- mv $VOLUME/$path.incoming $VOLUME/$path"
    until [ -e "$path" ]; do
        if [ "$waited" -ge "$WAIT_SECONDS" ]; then
            echo "Gave up after ${WAIT_SECONDS}s: $VOLUME/$path ($what) is still missing" >&2
            exit 1
        fi
        sleep 10
        waited=$((waited + 10))
    done
}

images() {  # NAME URL MEMBER PIN: raw/NAME is a folder of HR images (MEMBER: that folder in the archive)
    local name=$1 url=$2 member=$3 pin=$4 tmp
    if [ -d "raw/$name" ]; then
        echo "raw/$name: present"
        return
    fi
    if [ -z "$url" ]; then
        wait_for "raw/$name" "the $name HR images (a folder of PNGs)"
        return
    fi
    echo "raw/$name: downloading $url"
    tmp=$(mktemp -d "raw/.download-XXXXXX")
    download "$url" "$tmp/archive" "$pin" || { rm -rf "$tmp"; exit 1; }
    mkdir "$tmp/x"
    case "$url" in
        *.zip) python -m zipfile -e "$tmp/archive" "$tmp/x" ;;
        *) tar -xf "$tmp/archive" -C "$tmp/x" ;;
    esac
    mv "$tmp/x/$member" "raw/$name"
    rm -rf "$tmp"
}

weights() {  # FILE URL PIN: weights/FILE
    local file=$1 url=$2 pin=$3
    if [ -s "weights/$file" ]; then
        echo "weights/$file: present"
    elif [ -n "$url" ]; then
        echo "weights/$file: downloading $url"
        download "$url" "weights/$file" "$pin" || exit 1
        return
    else
        wait_for "weights/$file" "$file (published with the ESRGAN code, https://github.com/xinntao/ESRGAN)"
    fi
    verify "weights/$file" "$(pinned "${pin}_BYTES")" "$(pinned "${pin}_SHA256")" "$pin"
}

main() {
    check_pins
    cd "$VOLUME"
    mkdir -p raw data weights runs
    # What may need you first, so that the downloads run while you copy.
    images Set5 "$SET5_URL" Set5 SET5
    images Set14 "$SET14_URL" Set14 SET14
    weights RRDB_ESRGAN_x4.pth "$ESRGAN_URL" ESRGAN
    weights RRDB_PSNR_x4.pth "$PSNR_URL" PSNR
    weights vgg19-dcbb9e9d.pth "$VGG19_URL" VGG19
    images DIV2K_train_HR "$DIV2K_URL" DIV2K_train_HR DIV2K
    images DIV2K_valid_HR "$DIV2K_VAL_URL" DIV2K_valid_HR DIV2K_VAL
    images Flickr2K_HR "$FLICKR2K_URL" Flickr2K/Flickr2K_HR FLICKR2K

    trilevel data prepare raw/DIV2K_train_HR raw/Flickr2K_HR --out "$VOLUME/data/div2k-flickr2k" --scale "$SCALE"
    trilevel data prepare raw/DIV2K_valid_HR --out "$VOLUME/data/div2k-val" --scale "$SCALE"
    trilevel data prepare raw/Set5 --out "$VOLUME/data/set5" --scale "$SCALE"
    trilevel data prepare raw/Set14 --out "$VOLUME/data/set14" --scale "$SCALE"
    echo "Data and weights ready under $VOLUME: check a sweep with \`trilevel submit … --dry-run\` (deployment/README.md)."
}

# Run as a script (the Job, or by hand); sourced, it only defines the functions (tests).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main
fi
