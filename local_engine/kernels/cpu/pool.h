/* A small thread pool for the kernels: workers poll briefly, yielding the core, then sleep.
 *
 * Why not OpenMP: a decode step is ~150 short parallel calls a few to tens of microseconds
 * apart. libgomp workers either sleep at once (OMP_WAIT_POLICY=PASSIVE; each call then pays a
 * wake-up of ~25 us on a VM, as much as the work) or spin with `pause` (GOMP_SPINCOUNT), which
 * starves any other busy process on the core (batch-1 decode fell from 40 to 13 tok/s with the
 * second core taken). These workers instead poll with sched_yield() for up to SY_POOL_POLL_NS
 * after their last job: free when the core is idle, handing it over at once when it is not,
 * and asleep on a condition variable once the engine goes quiet. */
#ifndef SY_POOL_H
#define SY_POOL_H
#include <stdint.h>

typedef void (*sy_range_fn)(void *ctx, int64_t begin, int64_t end);

/* fn(ctx, b, e) over [0, n) in chunks of `grain`, handed out dynamically to the caller and the
 * pool's workers (started on demand: threads - 1, the most any call has asked for); returns
 * when every chunk is done. Runs everything on the calling thread when threads <= 1,
 * n <= grain, or another thread is already using the pool. */
void sy_parallel_for(int64_t n, int64_t grain, int threads, sy_range_fn fn, void *ctx);

#endif
