"""T(n)/T(1): a decode of n tokens after a short prompt, logits for every row vs only the last,
llama.cpp through llama-cpp-python's low-level API (same libraries as ppow), median of R."""
import sys, time, statistics, llama_cpp
path, R = sys.argv[1], 15
m = llama_cpp.Llama(path, n_ctx=1024, n_threads=2, n_threads_batch=2, n_batch=512, verbose=False)
ctx = m._ctx.ctx
mem = llama_cpp.llama_get_memory(ctx)
prompt = m.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6)
m.eval(prompt)
base = len(prompt)
batch = llama_cpp.llama_batch_init(16, 0, 1)
def run(n, all_logits):
    batch.n_tokens = n
    for i in range(n):
        batch.token[i] = prompt[i + 1]; batch.pos[i] = base + i; batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0; batch.logits[i] = 1 if (all_logits or i == n - 1) else 0
    t = time.perf_counter(); assert llama_cpp.llama_decode(ctx, batch) == 0
    if all_logits:
        for i in range(n): llama_cpp.llama_get_logits_ith(ctx, i)
    dt = time.perf_counter() - t
    llama_cpp.llama_memory_seq_rm(mem, 0, base, -1)
    return dt * 1e3
for n in (1, 2, 3, 4, 8): run(n, True)
res = {}
for al in (False, True):
    for n in (1, 2, 3, 4, 8):
        res[(n, al)] = statistics.median(run(n, al) for _ in range(R))
t1 = res[(1, False)]
for al in (False, True):
    print(("logits every row" if al else "logits last row "), " ".join(f"T({n})={res[(n, al)]:.2f}ms ({res[(n, al)]/t1:.2f})" for n in (1, 2, 3, 4, 8)))
