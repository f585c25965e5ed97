"""Fine-tune a Qwen3 checkpoint with a custom attention mask; options: --help (qwen3_custom_mask/cli/finetune.py).

    python scripts/finetune.py --model Qwen/Qwen3-0.6B --recipe configs/packed_sft.yaml --data train.jsonl
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune.py ...      (same as `qwen3-mask finetune`)
"""

import sys

from qwen3_custom_mask.cli.finetune import main
from qwen3_custom_mask.cli.args import run_script

if __name__ == "__main__":
    sys.exit(run_script(main))
