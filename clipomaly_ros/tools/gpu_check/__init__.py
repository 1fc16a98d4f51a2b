"""``make gpu-check``: every runtime, precision and layout of the model side on one machine, in one call that a
time-out cannot empty.

The check is a plan of rows (:mod:`.plan`), each run in a process of its own under its own time limit
(:mod:`.runner`): a row that hangs in a compile or an engine build is killed and recorded as FAIL "timed out after
N s", and the rows after it still run. Each row's record is appended to a JSONL file and printed the moment it
finishes; the final table (:mod:`.tables`) is made from that file, so ``--table FILE`` rebuilds it from a killed
run. What a row does is in :mod:`.rows` (versions, the CUDA test cases, one runtime x precision x layout), with
the serving thread and the compile counters in :mod:`.serving` and the naming path in :mod:`.naming_path`.
"""
