# The README's two commands: `make workbook` (PROFILE=cpu by default) and `make test`.
PROFILE ?= cpu
RUN ?= runs/$(PROFILE)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PUBLISH := $(if $(filter cpu,$(PROFILE)),--publish-figures figures,)

.PHONY: install workbook test lab bench base base-arms gpu-smoke clean-runs rl-controls rl-recovery rl-study results

# Bootstraps .venv when missing; re-runs pip only when pyproject.toml changed (idempotent).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

workbook: install
	$(PY) -m zoomdx_lib.workbook.runner --profile $(PROFILE) --out $(RUN) $(PUBLISH) $(ARGS)

# Pretrain the tiny base in two stages (each resumable; 45-80 + 30-45 min on 2 cores) and copy it into
# zoomdx_lib/base: stage 1 learns to find and read lesions, stage 2 continues on a new stream in which
# half the cases carry the SFT data's rationales (LoRA never trains embeddings, so the base must know them).
# Both stages use the default auxiliary losses, mask and pos (--aux to change them); stage 1 draws no
# isoechoic lesion in its first 1000 steps (--curriculum). A third stage (200 steps, about 4 min) continues
# the shipped two-stage base with 30 % of its cases answered in one turn from the full view, so that the
# single-turn baseline starts from a base that has read full views too (docs/base.md, "base arms").
base: install
	$(PY) -m zoomdx_lib.workbook.base --out runs/base --steps 2000 --lr 1e-3 --seed 0 --curriculum 1000 $(ARGS)
	$(PY) -m zoomdx_lib.workbook.base --out runs/base_rationale --init-from runs/base/checkpoint-002000 \
		--seed 2 --steps 1200 --lr 5e-4 --warmup 50 --rationales 0.5 --ship $(ARGS)
	$(PY) -m zoomdx_lib.workbook.base --out runs/base_both --init-from zoomdx_lib/base --seed 21 --steps 200 \
		--eval-every 200 --lr 3e-4 --warmup 20 --rationales 0.5 --aux mask,pos --single-turn 0.3 --ship \
		--card-note "$$(cat docs/base_card_note.md)" $(ARGS)

# Base ablation arms (docs/base.md): a short third stage from the shipped base per arm, two trainings each,
# paired on fresh cases (and BUS-BRA fold 3 when ZOOMDX_DATA holds it); resumable.
base-arms: install
	$(PY) -m zoomdx_lib.workbook.base_arms --out runs/base_arms $(ARGS)

# The results page from a finished run folder (default runs/$(PROFILE)): tables, claims, timing, commit, profile.
results: install
	$(PY) -m zoomdx_lib.eval.report $(RUN) --out docs/results.md

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lab: install
	$(VENV)/bin/jupyter lab notebooks/

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs/

# On a CUDA machine: Qwen2.5-VL-7B's architecture with random weights, 2 SFT + 2 GRPO steps at the paper's sizes.
gpu-smoke: install
	$(PY) -m zoomdx_lib.workbook.gpu_smoke $(ARGS)

# The positive controls (GRPO rewarding one constant answer, the box's IoU, or accuracy) from the cpu profile's
# zoom SFT start, trained once into runs/rl/sft_start; each prints one JSON line (docs/rl.md).
# constant reads 60 + 60 fresh cases (8 rollouts each), iou and accuracy 100 + 100 (greedy): the rows of docs/rl.md.
rl-controls: install
	for c in constant:60 iou:100 accuracy:100; do $(PY) -m zoomdx_lib.workbook.rl_controls --control $${c%%:*} \
		--n-eval $${c##*:} --steps 60 --out runs/rl \
		--set grpo__lr=3e-4 grpo__ppo_epochs=2 grpo__beta=0.04 grpo__refill_rounds=1 $(ARGS) || exit 1; done

# Is the controls' +5-point target within reach? The supervised reference (the SFT start trained 300 more steps
# on the true dialogues, and the base without adapter, paired with the start) and the recovery controls (GRPO
# from a start with a deliberate error: boxes of half the sides, the constant answer in 60 % of the dialogues);
# about 21 min on 2 free cores (docs/rl.md, "Is the target within reach?").
rl-recovery: install
	for c in iou accuracy; do $(PY) -m zoomdx_lib.workbook.rl_controls --control $$c --supervised --steps 300 \
		--lr 1e-3 --n-eval 100 --out runs/rl $(ARGS) || exit 1; done
	$(PY) -m zoomdx_lib.workbook.rl_controls --control iou --degrade box=0.5 --steps 60 --n-eval 100 --out runs/rl $(ARGS)
	$(PY) -m zoomdx_lib.workbook.rl_controls --control accuracy --degrade answer=0.6 --steps 60 --n-eval 100 \
		--out runs/rl $(ARGS)

# The RL study: per seed an SFT start and three GRPO arms, evaluated on 120 fresh cases per organ; resumable
# (nohup make rl-study &). JOBS=2 runs two seeds side by side in worker processes of one thread each: on 2
# cores they took 3 588 and 3 684 s for two seeds, where one seed alone with both threads took 2 415 s on the
# same machine (0.76x the time per seed; docs/rl.md); JOBS=1 runs the seeds one after the other. Each finished
# seed is kept in runs/rl_study/seeds/; a copy of docs/rl_study in runs/rl_study continues a committed study.
# Notebook 06 reads runs/rl_study.
SEEDS ?= 0,1,2,3,4,5,6,7,8,9
JOBS ?= 2
rl-study: install
	$(PY) -m zoomdx_lib.workbook.rl_study --out runs/rl_study --seeds $(SEEDS) --jobs $(JOBS) $(ARGS)
