#!/usr/bin/env bash
# Set up (or reuse) the virtual environment from requirements.txt, then run a ddrl job with spark-submit.
#
#   ./spark-submit.sh [--master URL] [other spark-submit options] jobs/JOB.py [job options]
#   ./spark-submit.sh --test [pytest options]        # the whole test suite, same environment
#
# The master defaults to $DDRL_MASTER, else local[*].  The venv lives in $DDRL_VENV (default .venv) and is
# rebuilt whenever requirements.txt changes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${DDRL_VENV:-$ROOT/.venv}
export DDRL_STARTED_AT=${DDRL_STARTED_AT:-$(date +%s.%N)}

ensure_venv() {
  local wanted stamp="$VENV/.requirements.sha256"
  wanted=$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)
  if [[ -x "$VENV/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$wanted" ]]; then
    return
  fi
  local python=${DDRL_PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "ddrl: setting up $VENV from requirements.txt (first run only) ..." >&2
  [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt" >&2
  echo "$wanted" > "$stamp"
}

command -v java >/dev/null || { echo "ddrl: Java 17 is needed for Spark (java not found on PATH)" >&2; exit 1; }
ensure_venv
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

if [[ "${1:-}" == "--test" ]]; then
  shift
  exec "$VENV/bin/python" -m pytest "$@"
fi

master=${DDRL_MASTER:-local[*]}
submit_args=()
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --master) master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    --verbose|--supervise) submit_args+=("$1"); shift ;;
    *) submit_args+=("$1" "$2"); shift 2 ;;
  esac
done
[[ $# -gt 0 ]] || { sed -n '2,8p' "$0" >&2; exit 2; }

exec "$VENV/bin/spark-submit" \
  --master "$master" \
  --properties-file "$ROOT/conf/spark-defaults.conf" \
  --driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties" \
  ${submit_args[@]+"${submit_args[@]}"} \
  "$@"
