# Reads Nsight Compute's --csv output (one metric) and prints one line per kernel launch.
import csv
import re
import sys

rows = list(csv.reader(line for line in sys.stdin if line.startswith('"')))
if not rows:
    sys.exit("no kernels profiled")
head, body = rows[0], rows[1:]
k, g, v, u = (head.index(c) for c in ("Kernel Name", "Grid Size", "Metric Value", "Metric Unit"))
for r in body:
    name = r[k].replace("retnet::cuda_detail::", "")
    base = re.sub(r"[<(].*", "", name)
    targs = re.search(r"<(.*)>", name)
    print(f"{r[v]:>10} {r[u]:<5} grid {r[g]:<16} {base} {targs.group(1)[:70] if targs else ''}")
