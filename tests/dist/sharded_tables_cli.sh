#!/usr/bin/env bash
# `towerrec train --distributed --table-sharding rows` on 2 ranks through the
# CLI: its checkpoint (model.ckpt and one shard file per rank) serves the
# one-rank commands (recommend, eval; a missing shard is an error naming it) and
# writes byte for byte the recommendations of a 2-rank replicated run (the
# two train bit for bit alike); `--resume` continues it on one rank, and a
# one-rank checkpoint continues sharded on 2 ranks.
# usage: sharded_tables_cli.sh TOWERREC MPIEXEC NUMPROC_FLAG [MPIEXEC_FLAGS...]
set -euo pipefail
bin=$1 mpiexec=$2 np=$3
shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run=(--device cpu --threads 1)
train=(--data "$dir/syn" --loss logistic --epochs 1 --lr-schedule constant --quiet "${run[@]}")
"$bin" synth --out "$dir/syn" --users 301 --items 120 --interactions-per-user 10 --seed 7 >/dev/null
"$bin" split --data "$dir/syn/interactions.csv" --out "$dir/split" >/dev/null
"$mpiexec" "$np" 2 "$@" "$bin" train --distributed --table-sharding rows "${train[@]}" --out "$dir/rows" >"$dir/rows.log"
grep -q "sent .* KiB per step" "$dir/rows.log" || { cat "$dir/rows.log" >&2; echo "no bytes-per-step report" >&2; exit 1; }
# The checkpoint: model.ckpt and one shard file per rank (rank 0's and rank 1's rows).
shards() { find "$1" -maxdepth 1 -name 'model.ckpt.rows-*' | wc -l; }
[ "$(shards "$dir/rows")" = 2 ] || { ls -l "$dir/rows" >&2; echo "expected 2 shard files" >&2; exit 1; }
ls "$dir/rows"/model.ckpt.rows-0-of-2.* "$dir/rows"/model.ckpt.rows-1-of-2.* >/dev/null
grep -q "model written to .*ID tables in 2 shard files" "$dir/rows.log" || { cat "$dir/rows.log" >&2; exit 1; }
"$mpiexec" "$np" 2 "$@" "$bin" train --distributed --table-sharding replicated "${train[@]}" --out "$dir/repl" >/dev/null
[ "$(shards "$dir/repl")" = 0 ]
# A missing shard: recommend fails, naming the file.
mkdir "$dir/broken"
cp "$dir/rows"/model.ckpt* "$dir/broken/"
gone=$(ls "$dir/broken"/model.ckpt.rows-1-of-2.*)
rm "$gone"
if "$bin" recommend --model "$dir/broken" --out "$dir/broken.csv" --k 7 "${run[@]}" >/dev/null 2>"$dir/broken.err"; then
  echo "recommend read a checkpoint with a missing shard" >&2
  exit 1
fi
grep -qF "$gone" "$dir/broken.err" || { cat "$dir/broken.err" >&2; echo "the error does not name $gone" >&2; exit 1; }
"$bin" recommend --model "$dir/rows" --out "$dir/rows.csv" --k 7 "${run[@]}" >/dev/null
"$bin" recommend --model "$dir/repl" --out "$dir/repl.csv" --k 7 "${run[@]}" >/dev/null
cmp "$dir/rows.csv" "$dir/repl.csv"
"$bin" eval --model "$dir/rows" --test "$dir/split/test.csv" --include-seen --json "${run[@]}" --quiet >"$dir/eval.txt"
grep -q "ndcg" "$dir/eval.txt" || { cat "$dir/eval.txt" >&2; exit 1; }
# 2 ranks (rows) -> 1 rank, and 1 rank -> 2 ranks (rows), one more epoch each.
# One rank writes one file: the shards it replaced go; 2 ranks (rows) write them again.
"$bin" train "${train[@]}" --epochs 2 --resume --out "$dir/rows" >/dev/null
[ "$(shards "$dir/rows")" = 0 ]
"$bin" train "${train[@]}" --out "$dir/one" >/dev/null
"$mpiexec" "$np" 2 "$@" "$bin" train --distributed --table-sharding rows "${train[@]}" --epochs 2 --resume \
  --out "$dir/one" >/dev/null
[ "$(shards "$dir/one")" = 2 ]
for m in rows one; do
  "$bin" recommend --model "$dir/$m" --out "$dir/$m-2.csv" --k 7 "${run[@]}" >/dev/null
  [ -s "$dir/$m-2.csv" ]
done
echo "train --table-sharding rows: 2-rank checkpoints serve recommend and eval, match replicated, resume on 1 rank and back"
