#!/bin/bash
# tools/test.sh -- the project's one test command (also CI's, via .ci/run).
#
#   1. tools/setup.sh               packages + editable install (fast when done)
#   2. unit tests on the host       pytest tests -m "not kernel and not cdev and not noiommu and not iommufd_container"
#      then tools/fuzz-records       3000 seeded record-file mutations (FUZZ_CASES=N to change; counts as one test)
#   3. tools/build-kernel.sh        both built guest kernels (cached after the first run)
#   4. tools/run-kernel-tests       the real-kernel matrix in QEMU guests
# and ends with one line `total: N passed, N failed[, N skipped]`, alone on the
# last line.  Exit status non-zero if any step failed.  Every step runs even if
# an earlier one failed (except when setup itself fails), so one run shows all.
# Extra arguments go to the unit-test pytest run.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=.harness
mkdir -p "$out"
py=python3
fail=0
declare -a timing=()
step() { echo; echo "=== $* ==="; }
mark() { timing+=("$(printf '%-22s %5d s' "$1" "$(( SECONDS - $2 ))")"); }

t=$SECONDS; step "setup"
if ! bash tools/setup.sh; then
    echo "test.sh: tools/setup.sh failed; nothing can be tested"
    echo "total: 0 passed, 1 failed"
    exit 1
fi
mark setup $t

t=$SECONDS; step "unit tests (host)"
rm -f "$out/junit-unit.xml"
"$py" -m pytest tests -m "not kernel and not cdev and not noiommu and not iommufd_container" \
    --junitxml="$out/junit-unit.xml" "$@"
unit_rc=$?
unit_extra=0
case $unit_rc in
    0) ;;
    5) echo "test.sh: unit tests: none collected (pytest exit 5)"; rm -f "$out/junit-unit.xml" ;;
    *) fail=1
       # failed tests are in the junit file; a pytest that died without one counts once
       [ -s "$out/junit-unit.xml" ] || unit_extra=1 ;;
esac
mark "unit tests" $t

# ---- record-file fuzz (tools/fuzz-records; the full 100,000 is run by hand) ----------
t=$SECONDS; step "record fuzz"
"$py" tools/fuzz-records --cases "${FUZZ_CASES:-3000}" --seed 1 --jobs 2 --quiet 2>&1 | tee "$out/fuzz-records.log"
fuzz_rc=${PIPESTATUS[0]}
fuzz_line="fuzz: 1 passed, 0 failed"
if [ "$fuzz_rc" != 0 ] || ! tail -1 "$out/fuzz-records.log" | grep -q '^fuzz-records: PASS'; then
    echo "test.sh: record fuzz failed (tools/fuzz-records exit $fuzz_rc; see $out/fuzz-records.log)"
    fuzz_line="fuzz: 0 passed, 1 failed"; fail=1
fi
mark "record fuzz" $t

t=$SECONDS; step "guest kernels"
for v in container iommufd-container; do
    bash tools/build-kernel.sh "$v" || { echo "test.sh: building the $v kernel failed"; fail=1; }
done
mark "kernel builds" $t

t=$SECONDS; step "real-kernel matrix"
"$py" tools/run-kernel-tests 2>&1 | tee "$out/kernel-matrix.log"
km_rc=${PIPESTATUS[0]}
[ "$km_rc" = 0 ] || fail=1
km=$(grep '^kernel-matrix: ' "$out/kernel-matrix.log" | tail -1)
mark "kernel matrix" $t

# ---- aggregate ---------------------------------------------------------------------
files=(); [ -s "$out/junit-unit.xml" ] && files+=("$out/junit-unit.xml")
unit_line=$("$py" tools/junit_summary.py --label unit --extra-failed "$unit_extra" "${files[@]}") || { unit_line="unit: 0 passed, 1 failed"; fail=1; }
if [ -z "$km" ]; then
    echo "test.sh: tools/run-kernel-tests printed no summary line"; km="kernel-matrix: 0 passed, 1 failed"; fail=1
fi
echo
echo "=== timing ==="
printf '%s\n' "${timing[@]}"
echo "$unit_line"
echo "$km"
echo "$fuzz_line"
# sum "N passed, N failed, N skipped" over the three lines
total=$(printf '%s\n%s\n%s\n' "$unit_line" "$km" "$fuzz_line" | awk '
    { for (i = 2; i < NF; i++) { n = $i + 0; w = $(i + 1); sub(/,$/, "", w); c[w] += n } }
    END { s = sprintf("total: %d passed, %d failed", c["passed"], c["failed"]);
          if (c["skipped"] > 0) s = s sprintf(", %d skipped", c["skipped"]); print s }')
case $total in *", 0 failed"*) ;; *) fail=1 ;; esac
echo "$total"
exit $fail
