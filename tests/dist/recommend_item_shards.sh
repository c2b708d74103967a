#!/usr/bin/env bash
# `towerrec recommend --distributed --shard items`: each rank ranks only its
# slice of the catalogue and the per-user lists are merged. On 1 (no launcher),
# 2 and 3 ranks it writes byte for byte the file one rank writes: every user,
# k larger than a shard, named users (a rank owning none), a users file, small
# blocks (many merge steps), allow/deny lists and feature conditions (some
# shards left with no candidate), --seen and --include-seen, --histories, and
# more ranks than items (an empty shard). No part files stay behind.
# usage: recommend_item_shards.sh TOWERREC MPIEXEC NUMPROC_FLAG [MPIEXEC_FLAGS...]
set -euo pipefail
bin=$1 mpiexec=$2 np=$3
shift 3
launch=("$@")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run=(--device cpu --threads 1)
"$bin" synth --out "$dir/syn" --users 301 --items 120 --interactions-per-user 10 --seed 7 >/dev/null
"$bin" train --data "$dir/syn" --epochs 1 --quiet "${run[@]}" --out "$dir/m" >/dev/null
"$bin" train --data "$dir/syn" --epochs 1 --quiet "${run[@]}" --history 3 --features false --out "$dir/hm" >/dev/null
n_items=$(($(wc -l <"$dir/syn/items.csv") - 1))

# Inputs: named users, an allow list of low item indices (the last shards keep
# none of it), a deny list, another interaction file for --seen, histories of
# users the model has never seen.
awk -F, 'NR > 1 && NR % 9 == 0 {print $1}' "$dir/syn/users.csv" >"$dir/users.txt"
awk -F, 'NR > 1 && NR <= 25 {print $1}' "$dir/syn/items.csv" >"$dir/allow.txt"
awk -F, 'NR > 1 && NR % 5 == 0 {print $1}' "$dir/syn/items.csv" >"$dir/deny.txt"
awk -F, 'NR == 1 || NR % 3 == 0' "$dir/syn/interactions.csv" >"$dir/seen.csv"
awk -F, 'NR == 1 {print "user,item"} NR > 1 && NR <= 400 {print "new-" $1 "," $2}' \
  "$dir/syn/interactions.csv" >"$dir/hist.csv"

cases=(
  "all|--model $dir/m --k 7"
  "k-over-shard|--model $dir/m --k $((n_items / 2 + 3))"
  "named|--model $dir/m --user u3 --user u1 --k 5"
  "users-file|--model $dir/m --users $dir/users.txt --k 9 --block-users 4"
  "one-user-blocks|--model $dir/m --k 6 --block-users 1"
  "allow|--model $dir/m --items $dir/allow.txt --k 8"
  "deny-where|--model $dir/m --exclude $dir/deny.txt --where category=c1 --k 6"
  "allow-where|--model $dir/m --items $dir/allow.txt --where category!=c1 --k 30"
  "seen|--model $dir/m --seen $dir/seen.csv --k 5"
  "include-seen|--model $dir/m --include-seen --k 5"
  "histories|--model $dir/hm --histories $dir/hist.csv --k 7"
  "histories-allow|--model $dir/hm --histories $dir/hist.csv --items $dir/allow.txt --k 12"
)
for c in "${cases[@]}"; do
  name=${c%%|*}
  read -r -a flags <<<"${c#*|}"
  "$bin" recommend "${flags[@]}" --out "$dir/$name.one.csv" "${run[@]}" --quiet
  # One rank (no launcher): the sharded path with a single shard.
  "$bin" recommend "${flags[@]}" --shard items --out "$dir/$name.1.csv" "${run[@]}" --quiet
  cmp "$dir/$name.one.csv" "$dir/$name.1.csv"
  for ranks in 2 3; do
    "$mpiexec" "$np" "$ranks" "${launch[@]}" "$bin" recommend --distributed --shard items "${flags[@]}" \
      --out "$dir/$name.$ranks.csv" "${run[@]}" --quiet
    cmp "$dir/$name.one.csv" "$dir/$name.$ranks.csv"
  done
  echo "$name: $(($(wc -l <"$dir/$name.one.csv") - 1)) rows, the same on 1, 2 and 3 item shards"
done
# More ranks than items: 2 items on 3 ranks leave rank 0 an empty shard.
"$bin" synth --out "$dir/tiny" --users 20 --items 2 --interactions-per-user 1 --seed 3 >/dev/null
"$bin" train --data "$dir/tiny" --epochs 1 --quiet "${run[@]}" --out "$dir/tm" >/dev/null
"$bin" recommend --model "$dir/tm" --include-seen --k 3 --out "$dir/tiny.one.csv" "${run[@]}" --quiet
"$mpiexec" "$np" 3 "${launch[@]}" "$bin" recommend --distributed --shard items --model "$dir/tm" --include-seen \
  --k 3 --out "$dir/tiny.3.csv" "${run[@]}" --quiet
cmp "$dir/tiny.one.csv" "$dir/tiny.3.csv"
echo "empty item shard: $(($(wc -l <"$dir/tiny.one.csv") - 1)) rows, the same on 3 ranks as on one"
if ls "$dir" | grep -q part; then
  echo "part files left behind: $(ls "$dir")" >&2
  exit 1
fi
if "$bin" recommend --model "$dir/m" --out "$dir/bad.csv" --shard rows "${run[@]}" 2>"$dir/err.txt"; then
  echo "--shard rows was accepted" >&2
  exit 1
fi
grep -q -- "--shard" "$dir/err.txt"
echo "recommend --shard items: ${#cases[@]} cases byte-identical to one rank on 1, 2 and 3 shards"
