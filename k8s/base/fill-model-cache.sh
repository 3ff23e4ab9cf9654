#!/bin/sh
# Fills the model cache once per volume, so a new pod on a warm node skips the download.
# MODEL_PATH: the model directory on the cache volume.
# MODEL_FILL_COMMAND: a shell command that writes the model into "$MODEL_PATH".
# The directory is filled when it is empty, or when an earlier fill was interrupted
# (the marker file below is still there); a directory someone filled by hand is kept.
set -eu

: "${MODEL_PATH:?MODEL_PATH must name the model directory on the cache volume}"
: "${MODEL_FILL_COMMAND:?MODEL_FILL_COMMAND must say how to fill MODEL_PATH}"

in_progress="$MODEL_PATH/.fill-in-progress"
cache_root=$(dirname "$MODEL_PATH")
mkdir -p "$cache_root"

# Pods starting together on one node share the volume: one fills, the others wait.
exec 9>"$cache_root/.fill.lock"
flock 9

if [ -d "$MODEL_PATH" ] && [ ! -e "$in_progress" ] && [ -n "$(ls -A "$MODEL_PATH")" ]; then
    echo "model cache warm: $MODEL_PATH"
    exit 0
fi

rm -rf "$MODEL_PATH"
mkdir -p "$MODEL_PATH"
touch "$in_progress"
started=$(date +%s)
echo "model cache empty, filling $MODEL_PATH with: $MODEL_FILL_COMMAND"
sh -c "$MODEL_FILL_COMMAND"
rm -f "$in_progress"
if [ -z "$(ls -A "$MODEL_PATH")" ]; then
    echo "MODEL_FILL_COMMAND succeeded but wrote nothing into $MODEL_PATH" >&2
    exit 1
fi
echo "model cache filled in $(( $(date +%s) - started ))s"
