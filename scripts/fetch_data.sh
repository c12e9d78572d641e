#!/usr/bin/env bash
# Fetch the GPT-2 byte-level BPE files used by config/resources/train_tinystories.toml into
# data/ (gpt2_vocab.json = OpenAI's encoder.json, gpt2_merges.txt = vocab.bpe without its
# "#version" line), verifying their sha256. With --from DIR, copy them from a local folder
# instead of downloading (e.g. a machine without network).
#
#   scripts/fetch_data.sh                 # download
#   scripts/fetch_data.sh --from ~/gpt2   # copy gpt2_vocab.json and gpt2_merges.txt from a folder
set -euo pipefail

dest="${DATA_DIR:-data}"
base_url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
vocab_sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
merges_sha256="ac33235097fe06d4a8fff0feac994644809e6eb6ab70669e1e9fd40ae032428e"

die() { echo "fetch_data: error: $*" >&2; exit 2; }

check() {  # check FILE SHA256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$got" = "$2" ] || die "$1: sha256 $got does not match the expected $2"
}

mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "${1:-}" = "--from" ]; then
    src="${2:?usage: fetch_data.sh --from DIR}"
    for name in gpt2_vocab.json gpt2_merges.txt; do
        [ -f "$src/$name" ] || die "$src/$name: not found"
        cp "$src/$name" "$tmp/$name"
    done
elif [ $# -gt 0 ]; then
    die "unknown argument '$1' (usage: fetch_data.sh [--from DIR])"
else
    command -v curl >/dev/null || die "curl is needed to download; or use --from DIR"
    curl -fsSL --retry 3 -o "$tmp/gpt2_vocab.json" "$base_url/encoder.json" || die "download of encoder.json failed"
    curl -fsSL --retry 3 -o "$tmp/vocab.bpe" "$base_url/vocab.bpe" || die "download of vocab.bpe failed"
    tail -n +2 "$tmp/vocab.bpe" > "$tmp/gpt2_merges.txt"
fi

check "$tmp/gpt2_vocab.json" "$vocab_sha256"
check "$tmp/gpt2_merges.txt" "$merges_sha256"
mv "$tmp/gpt2_vocab.json" "$dest/gpt2_vocab.json"
mv "$tmp/gpt2_merges.txt" "$dest/gpt2_merges.txt"
echo "fetch_data: wrote $dest/gpt2_vocab.json and $dest/gpt2_merges.txt"
