#!/bin/sh
# Fills the model cache once per volume, so a new pod on a warm node skips the download.
# MODEL_PATH: the model directory on the cache volume.
# MODEL_FILL_COMMAND: a shell command that writes the model into "$MODEL_PATH".
# COMPILE_ARTIFACTS_DIR (optional): where the engine looks for compile artifacts; any that came
# with the model ("$MODEL_PATH/compile-artifacts/*.zip") are copied there, so that the first
# start on a new node loads them instead of compiling.
# The directory is filled when it is empty, or when an earlier fill was interrupted
# (the marker file below is still there); a directory someone filled by hand is kept.
set -eu

: "${MODEL_PATH:?MODEL_PATH must name the model directory on the cache volume}"
: "${MODEL_FILL_COMMAND:?MODEL_FILL_COMMAND must say how to fill MODEL_PATH}"

in_progress="$MODEL_PATH/.fill-in-progress"
cache_root=$(dirname "$MODEL_PATH")
mkdir -p "$cache_root"

copy_compile_artifacts() {
    [ -n "${COMPILE_ARTIFACTS_DIR:-}" ] && [ -d "$MODEL_PATH/compile-artifacts" ] || return 0
    mkdir -p "$COMPILE_ARTIFACTS_DIR"
    for artifact in "$MODEL_PATH"/compile-artifacts/*.zip; do
        target="$COMPILE_ARTIFACTS_DIR/$(basename "$artifact")"
        # One the node wrote itself is kept; a copy appears whole or not at all.
        [ -f "$artifact" ] && [ ! -e "$target" ] || continue
        cp "$artifact" "$target.part" && mv "$target.part" "$target"
        echo "compile artifacts copied: $target"
    done
}

# Pods starting together on one node share the volume: one fills, the others wait.
exec 9>"$cache_root/.fill.lock"
flock 9

if [ -d "$MODEL_PATH" ] && [ ! -e "$in_progress" ] && [ -n "$(ls -A "$MODEL_PATH")" ]; then
    echo "model cache warm: $MODEL_PATH"
    copy_compile_artifacts
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
copy_compile_artifacts
