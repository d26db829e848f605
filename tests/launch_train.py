"""`accelerate launch tests/launch_train.py TRAIN-ARGS`: gzfast/train.py with each rank's sample ids
recorded, for the multi-process tests (the product has no test-only code path).

Writes RUN/ids-rank{r}-epoch{e}.json (the ids of rank r's training batches in epoch e, 0-based) and
RUN/val-ids-rank{r}.json (the real, unpadded rows of rank r's last validation pass). With
TEST_BATCH_DELAY=S each training batch is held back S seconds, so a test can signal a run mid-epoch.
"""
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gzfast import train as train_mod  # noqa: E402

real_make_loader = train_mod.make_loader
DELAY = float(os.environ.get("TEST_BATCH_DELAY", "0"))


def out_dir() -> Path:
    argv = sys.argv[1:]
    return Path(argv[argv.index("--out") + 1])


class Recorder:
    def __init__(self, loader, path: Path, train: bool):
        self.loader, self.path, self.train = loader, path, train

    def __len__(self):
        return len(self.loader)

    def prepare(self):
        getattr(self.loader, "prepare", lambda: None)()
        return self

    def __iter__(self):
        ids = []
        for batch in self.loader:
            ids += batch.ids[:len(batch)].tolist()
            # after every batch: the trainer takes exactly len() batches and never finishes the generator
            self.path.write_text(json.dumps(ids))
            if self.train:
                time.sleep(DELAY)
            yield batch


def recording(name, paths, **kw):
    loader = real_make_loader(name, paths, **kw)
    rank = kw.get("rank", 0)
    name = f"ids-rank{rank}-epoch{kw.get('epoch', 0)}.json" if kw["train"] else f"val-ids-rank{rank}.json"
    return Recorder(loader, out_dir() / name, kw["train"])


train_mod.make_loader = recording

if __name__ == "__main__":
    sys.exit(train_mod.main(sys.argv[1:]))
