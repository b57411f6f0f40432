"""Driver for tests/train/test_multiprocess.py: a few SFT steps through TRL's SFTTrainer with plain SGD and no
dropout, in one process or under ``accelerate launch`` (weights then depend linearly on the gradients,
so one process and N processes over the same global batch must agree to float rounding).

    python tests/train/multiprocess_sft_driver.py MODEL_DIR DATA_DIR OUT_DIR STEPS GLOBAL_BATCH [CHECKPOINT_EVERY]
"""
import sys

import torch
from peft import get_peft_model

from zoomdx_lib.model.load import load_model_and_processor, lora_config
from zoomdx_lib.train.sft import dialogue_records
from zoomdx_lib.train.sft_trainer import DialogueDataset, train_with_trl


def main(model_dir, data_dir, out_dir, steps, batch, every=2):
    torch.manual_seed(0)
    model, processor = load_model_and_processor(model_dir)
    peft = get_peft_model(model, lora_config(32, 64, 0.0))
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    data = DialogueDataset(dialogue_records(data_dir, "train"), data_dir)
    train_with_trl(peft, processor, data, int(steps), int(batch), opt, sched, out_dir, checkpoint_every=int(every), progress=False)
    from accelerate import PartialState
    if PartialState().is_main_process:
        peft.save_pretrained(f"{out_dir}/adapter", safe_serialization=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
