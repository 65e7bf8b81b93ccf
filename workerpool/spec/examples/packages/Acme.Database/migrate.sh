#!/bin/bash
# A stand-in for DbUp's console runner: "applies" the package's scripts in order and reports
# the version it deployed as an output variable.
set -euo pipefail
here=$(dirname "$0")
echo "DbUp: connecting to ${1%%;*}"
for script in "$here"/scripts/*.sql; do
  echo "DbUp: executing $(basename "$script")"
done
echo "DbUp: configuration is $(cat "$here/app.config")"
set_workerpool_variable Version "$(cat "$here/VERSION")"
