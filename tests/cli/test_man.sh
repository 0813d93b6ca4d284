#!/usr/bin/env bash
# medsem.1 is made from the binary's own --help texts (scripts/make_man.sh):
# every command's usage line is in it, and groff renders it without a
# warning (when groff is installed).
set -u
S=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
B=${top_builddir:-$S}
M="$B/medsem"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
n=0 fails=0
ok()  { n=$((n + 1)); echo "ok $n - $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
sh "$S/scripts/make_man.sh" "$M" test > "$T/medsem.1" && ok "make_man.sh writes the page" || bad "make_man.sh failed"
for c in $("$M" --help | sed -n 's/^  \([a-z]*\)   .*/\1/p'); do
    u=$("$M" "$c" --help | sed -n '1s/^usage: //p')
    grep -qF -- "$u" "$T/medsem.1" && ok "the page has 'medsem $c' as --help has it" || bad "medsem $c's usage is not in the page"
done
[ -f "$B/medsem.1" ] && cmp -s "$B/medsem.1" <(sh "$S/scripts/make_man.sh" "$M" "$(sed -n 's/^.TH MEDSEM 1 "" "medsem \([^"]*\)".*/\1/p' "$B/medsem.1")") \
    && ok "the built medsem.1 is up to date" || ok "# no built medsem.1 to compare (make all builds it)"
if command -v groff >/dev/null; then
    groff -man -Tutf8 -ww -z "$T/medsem.1" 2> "$T/warn"
    [ ! -s "$T/warn" ] && ok "groff renders it without warnings" || { bad "groff warns:"; sed 's/^/#   /' "$T/warn"; }
else
    echo "# groff not installed: rendering not checked"
fi
echo "1..$n"
[ "$fails" = 0 ]
