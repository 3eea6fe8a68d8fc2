#!/usr/bin/env bash
# The data-and-weights step, run once by the Job in prepare-data.yaml (or by hand on any machine that
# mounts the volume) before any sweep is submitted. It leaves on the shared volume exactly what the
# paper presets read (rayjob.yaml passes these paths with --set):
#
#   data/div2k-flickr2k   DIV2K_train_HR + Flickr2K_HR, prepared for x4   (data.train)
#   data/set5             Set5 HR, prepared for x4                         (data.val.Set5)
#   data/set14            Set14 HR, prepared for x4                        (data.val.Set14)
#   weights/RRDB_ESRGAN_x4.pth, weights/RRDB_PSNR_x4.pth, weights/vgg19-dcbb9e9d.pth
#
# Each source is used if already on the volume (raw/<name>/ or weights/<file>), else downloaded from
# its URL variable, else waited for while you copy it in (the log prints the two commands). Sources
# with a stable official URL have it as the default; the ESRGAN teachers and Set5/Set14 do not (Google
# Drive links and mirrors), so set their URLs in prepare-data.yaml or copy them in. Everything is
# idempotent: `trilevel data prepare` reuses a finished data set, present files are kept.
set -euo pipefail

VOLUME=${TRILEVEL_VOLUME:-/mnt/trilevel}
SCALE=${SCALE:-4}
WAIT_SECONDS=${WAIT_SECONDS:-86400}
NAMESPACE=${POD_NAMESPACE:-<namespace>}
POD=${HOSTNAME:-<pod>}
DIV2K_URL=${DIV2K_URL-http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip}
FLICKR2K_URL=${FLICKR2K_URL-https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar}
VGG19_URL=${VGG19_URL-https://download.pytorch.org/models/vgg19-dcbb9e9d.pth}
SET5_URL=${SET5_URL:-}
SET14_URL=${SET14_URL:-}
ESRGAN_URL=${ESRGAN_URL:-}
PSNR_URL=${PSNR_URL:-}

cd "$VOLUME"
mkdir -p raw data weights runs

download() {  # URL FILE: to FILE.part, renamed when complete
    python -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2.part"
    mv "$2.part" "$2"
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

images() {  # NAME URL MEMBER: raw/NAME is a folder of HR images (MEMBER: that folder inside the archive)
    local name=$1 url=$2 member=$3 tmp
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
    download "$url" "$tmp/archive"
    mkdir "$tmp/x"
    case "$url" in
        *.zip) python -m zipfile -e "$tmp/archive" "$tmp/x" ;;
        *) tar -xf "$tmp/archive" -C "$tmp/x" ;;
    esac
    mv "$tmp/x/$member" "raw/$name"
    rm -rf "$tmp"
}

weights() {  # FILE URL: weights/FILE
    local file=$1 url=$2
    if [ -s "weights/$file" ]; then
        echo "weights/$file: present"
    elif [ -n "$url" ]; then
        echo "weights/$file: downloading $url"
        download "$url" "weights/$file"
    else
        wait_for "weights/$file" "$file (published with the ESRGAN code, https://github.com/xinntao/ESRGAN)"
    fi
}

# What may need you first, so that the downloads run while you copy.
images Set5 "$SET5_URL" Set5
images Set14 "$SET14_URL" Set14
weights RRDB_ESRGAN_x4.pth "$ESRGAN_URL"
weights RRDB_PSNR_x4.pth "$PSNR_URL"
weights vgg19-dcbb9e9d.pth "$VGG19_URL"
images DIV2K_train_HR "$DIV2K_URL" DIV2K_train_HR
images Flickr2K_HR "$FLICKR2K_URL" Flickr2K/Flickr2K_HR

trilevel data prepare raw/DIV2K_train_HR raw/Flickr2K_HR --out "$VOLUME/data/div2k-flickr2k" --scale "$SCALE"
trilevel data prepare raw/Set5 --out "$VOLUME/data/set5" --scale "$SCALE"
trilevel data prepare raw/Set14 --out "$VOLUME/data/set14" --scale "$SCALE"
echo "Data and weights ready under $VOLUME: check a sweep with \`trilevel submit … --dry-run\` (deployment/README.md)."
