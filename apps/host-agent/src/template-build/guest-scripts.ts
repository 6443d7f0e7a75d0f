/**
 * Shell run as root inside a build VM. Inputs arrive as environment variables (never spliced into the text), so no
 * quoting of user-supplied paths is needed. Both are plain bash + coreutils + tar: what every base has.
 */

/**
 * COPY with Docker's semantics, from the uploaded build context archive (tar or tar.gz, paths relative to the context):
 *  - KILN_SRC is a path or glob inside the context (dotfiles match `*`); no match is an error;
 *  - a directory source copies its contents, not itself;
 *  - KILN_DEST ending in `/`, an existing directory, or several sources: copied into it; otherwise the file's path;
 *  - a relative destination is relative to KILN_WORKDIR (`/` when unset); missing parents are created;
 *  - everything copied or created is owned by KILN_OWNER (root when empty), KILN_MODE (octal) applied when set.
 * Env: KILN_ARCHIVE (removed afterwards), KILN_SRC, KILN_DEST, KILN_WORKDIR, KILN_OWNER, KILN_MODE.
 */
export const COPY_SCRIPT = `set -euo pipefail
ctx=$(mktemp -d "\${TMPDIR:-/tmp}/kiln-copy.XXXXXX")
trap 'rm -rf "$ctx" "$KILN_ARCHIVE"' EXIT
tar -xf "$KILN_ARCHIVE" -C "$ctx" --no-same-owner
owner=\${KILN_OWNER:-root}
group=$(id -gn "$owner") || { echo "COPY: no such user: $owner" >&2; exit 2; }
dest=$KILN_DEST
case $dest in /*) ;; *) dest="\${KILN_WORKDIR:-/}/$dest" ;; esac
cd "$ctx"
shopt -s nullglob dotglob
IFS=
matches=( $KILN_SRC )
IFS=$' \\t\\n'
if [ \${#matches[@]} -eq 0 ]; then echo "COPY: no file in the build context matches '$KILN_SRC'" >&2; exit 2; fi
into_dir=0
if [[ $KILN_DEST == */ ]] || [ -d "$dest" ] || [ \${#matches[@]} -gt 1 ]; then into_dir=1; fi
created=()
copied=()
# mkdir -p that remembers the topmost directory it had to create (it gets the owner too).
make_dirs() {
  local d=$1 first=
  while [ ! -e "$d" ]; do first=$d; d=$(dirname "$d"); done
  mkdir -p "$1"
  if [ -n "$first" ]; then created+=("$first"); fi
}
for src in "\${matches[@]}"; do
  if [ -d "$src" ] && [ ! -L "$src" ]; then
    make_dirs "$dest"
    for entry in "$src"/*; do
      cp -a "$entry" "$dest/"
      copied+=("$dest/$(basename "$entry")")
    done
  elif [ $into_dir = 1 ]; then
    make_dirs "$dest"
    cp -a "$src" "$dest/"
    copied+=("$dest/$(basename "$src")")
  else
    make_dirs "$(dirname "$dest")"
    if [ -d "$dest" ]; then rm -rf "$dest"; fi
    cp -a "$src" "$dest"
    copied+=("$dest")
  fi
done
if [ \${#created[@]} -gt 0 ]; then chown -R -h "$owner:$group" "\${created[@]}"; fi
if [ \${#copied[@]} -gt 0 ]; then
  chown -R -h "$owner:$group" "\${copied[@]}"
  if [ -n "\${KILN_MODE:-}" ]; then chmod -R "$KILN_MODE" "\${copied[@]}"; fi
fi
echo "copied $KILN_SRC to $dest (\${#copied[@]} entries, owner $owner)"
`;

/**
 * Creates KILN_WORKDIR when missing (WORKDIR's promise), owned by KILN_USER from the first directory it had to make
 * (BuildKit's behaviour): run before each filesystem step, so the step runs in it and its layer holds it.
 */
export const ENSURE_WORKDIR_SCRIPT = `set -euo pipefail
d=$KILN_WORKDIR first=
while [ ! -e "$d" ]; do first=$d; d=$(dirname "$d"); done
[ -z "$first" ] && exit 0
mkdir -p "$KILN_WORKDIR"
group=$(id -gn "$KILN_USER") || { echo "WORKDIR: no such user: $KILN_USER" >&2; exit 2; }
chown -R "$KILN_USER:$group" "$first"
`;
