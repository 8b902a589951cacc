# Sourced by the benchmark scripts, in the checkout's root: PYTHON, unless already set, is the
# checkout's .venv interpreter, else python3.
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
