"""Callbacks used by the CLI tests through `--trainer.callbacks+=tests.helpers.RecordBatches`."""

import json
import os

import lightning as L


class RecordBatches(L.Callback):
    """Append each rank's first training batch (token ids) to $DIMBA_TEST_RECORD as JSON lines."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            with open(os.environ["DIMBA_TEST_RECORD"], "a") as fh:
                fh.write(json.dumps({"rank": trainer.global_rank, "batch": batch.tolist()}) + "\n")
