"""What a pruned network gets after the cut: calibration of BatchNorm statistics and channel
scales (:mod:`.calibrate`), and the one supervised training loop that trains baselines and
fine-tunes pruned networks (:mod:`.train`), optionally with distillation (:mod:`.distillation`)."""
