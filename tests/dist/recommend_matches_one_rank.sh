#!/usr/bin/env bash
# `towerrec recommend --distributed` on 2 ranks (every user) and on 3 ranks
# (two named users: one rank's shard is empty) writes byte for byte the file
# one rank writes, and leaves no part files behind.
# usage: recommend_matches_one_rank.sh TOWERREC MPIEXEC NUMPROC_FLAG [MPIEXEC_FLAGS...]
set -euo pipefail
bin=$1 mpiexec=$2 np=$3
shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run=(--device cpu --threads 1)
"$bin" synth --out "$dir/syn" --users 301 --items 120 --interactions-per-user 10 --seed 7 >/dev/null
"$bin" train --data "$dir/syn" --epochs 1 --quiet "${run[@]}" --out "$dir/m" >/dev/null
"$bin" recommend --model "$dir/m" --out "$dir/one.csv" --k 7 "${run[@]}" >/dev/null
"$mpiexec" "$np" 2 "$@" "$bin" recommend --distributed --model "$dir/m" --out "$dir/two.csv" --k 7 "${run[@]}"
cmp "$dir/one.csv" "$dir/two.csv"
"$bin" recommend --model "$dir/m" --out "$dir/one-named.csv" --user u3 --user u1 "${run[@]}" >/dev/null
"$mpiexec" "$np" 3 "$@" "$bin" recommend --distributed --model "$dir/m" --out "$dir/three-named.csv" \
  --user u3 --user u1 "${run[@]}" >/dev/null
cmp "$dir/one-named.csv" "$dir/three-named.csv"
if ls "$dir" | grep -q part; then
  echo "part files left behind: $(ls "$dir")" >&2
  exit 1
fi
echo "recommend --distributed: 2 and 3 ranks wrote the files 1 rank writes ($(wc -l <"$dir/one.csv") lines)"
