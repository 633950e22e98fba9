"""Command-line entry for the pack's tools, from a plain checkout or a ComfyUI custom_nodes folder.

    python tools.py demo                      # tiny random model: convert, load in FP8, sample, compare with bf16
    python tools.py convert SRC DST --policy fp8-balanced
    python tools.py inspect FILE
    python tools.py quality FILE --policies fp8-balanced,fp8-max
    python tools.py bench step|linear|attention|fused [args...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pack_path import load_pack  # noqa: E402

if __name__ == "__main__":
    load_pack()
    from hyvideo_fp8.hunyuan.cli import main

    sys.exit(main(sys.argv[1:]))
