# source bench/gpu/gaps_run.sh: gaps_run NAME TIMEOUT ARGS... runs bench/gpu/profile_step.py --gaps ARGS (with $P as
# the command's start, e.g. P="python3 bench/gpu/profile_step.py --gaps"), its log to $OUT/gaps_NAME.log, and prints
# the lines that matter: ms/step, graph captures, the largest GPU idle gaps, host waits, the host's top functions.
gaps_run() {
  local name=$1 t=$2; shift 2
  echo "=== $name"
  timeout "$t" $P "$@" > "$OUT/gaps_$name.log" 2>&1; echo "exit $?"
  grep -E "^(PROFILE|GRAPH|GPU IDLE|HOST WAITS)|^  +[0-9.]+  " "$OUT/gaps_$name.log" | cut -c1-200
  grep -A22 "^HOST (cProfile" "$OUT/gaps_$name.log" | grep -E "^ +[0-9]" | head -12 | cut -c1-160
}
