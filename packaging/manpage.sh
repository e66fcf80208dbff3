#!/bin/sh
# Writes a man page for one of derpd's programs from the program's own -h text, so that the page
# cannot drift from the flags: the build runs this on the binary it just linked.
#   manpage.sh BINARY NAME SECTION VERSION "one-line summary" "description paragraph" OUTPUT
# The -h text is Go's flag format (core/flags): an optional "usage:" line, "Usage of NAME:",
# then for each flag "  -name type" and its description on the next line(s) after a tab.
set -eu
binary=$1 name=$2 section=$3 version=$4 summary=$5 description=$6 output=$7

# The program prints its help on stderr and may exit non-zero for -h (as Go programs do).
help=$("$binary" -h 2>&1 >/dev/null || true)
[ -n "$help" ] || { echo "manpage.sh: $binary -h printed nothing" >&2; exit 1; }

# roff: a backslash is written \e, a leading dot or quote is escaped, hyphens in flags are \-.
escape() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

{
  echo ".TH $(echo "$name" | tr '[:lower:]' '[:upper:]') $section \"\" \"derpd $version\" \"derpd\""
  echo ".SH NAME"
  printf '%s \\- %s\n' "$name" "$(printf '%s\n' "$summary" | escape)"
  echo ".SH SYNOPSIS"
  usage=$(printf '%s\n' "$help" | sed -n 's/^usage: //p' | head -n 1)
  if [ -n "$usage" ]; then
    printf '%s\n' "$usage" | escape | sed 's/-/\\-/g'
  else
    printf '.B %s\n[\\fIflags\\fR]\n' "$name"
  fi
  echo ".SH DESCRIPTION"
  printf '%s\n' "$description" | escape
  echo ".PP"
  printf '%s\n' "Flags take Go's forms: \\fB\\-name value\\fR, \\fB\\-name=value\\fR, \\fB\\-\\-name\\fR; booleans need no value; durations are written like \\fB1m30s\\fR."
  echo ".SH OPTIONS"
  printf '%s\n' "$help" | awk '
    /^  -/ {
      flag = $1; sub(/^-/, "", flag); type = $2
      printf ".TP\n\\fB\\-%s\\fR", flag
      if (type != "") printf " \\fI%s\\fR", type
      printf "\n"
      next
    }
    /^    \t/ { line = $0; sub(/^    \t/, "", line); print line; next }
  ' | sed -e '/^\.TP$/b' -e '/^\\fB/b' -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
  echo ".SH SEE ALSO"
  echo "derpd(8), derpbench(1), derpprobe(1), stunc(1); /usr/share/doc/derpd/"
} >"$output"

# A page without options means the help format changed under this script.
grep -q '^\.TP$' "$output" || { echo "manpage.sh: no flags found in $binary -h" >&2; exit 1; }
