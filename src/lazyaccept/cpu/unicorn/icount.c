/* Guest instructions executed under unicorn, counted by a native UC_HOOK_BLOCK callback.
 *
 * With exactly one block hook installed, unicorn 2.1 calls it straight from the translated code (an "inline
 * hook": qemu/include/tcg/tcg-op.h gen_uc_tracecode), so one call per executed block costs a few ns. The
 * callback is unicorn's uc_cb_hookcode_t (include/unicorn/unicorn.h): (uc, address, size, user_data).
 *
 * A block is known by (address, size in bytes). Its instruction count comes once, at its first execution, from
 * uc_ctl(UC_CTL_TB_REQUEST_CACHE) (uc.c: uc_gen_tb), which finds the block being executed in unicorn's own
 * translation cache and returns its icount; each later execution is one hash lookup. A block cut short by an
 * exception still counts whole. No unicorn header is needed: uc_ctl and its control code are passed in.
 *
 * The instructions are also kept by the 4 KiB page their block starts in, until icount_drain hands them over:
 * Python names the firmware module of each page, so work between two synchronous points goes to its modules.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
} uc_tb_info; /* uc_tb, include/unicorn/unicorn.h (2.1) */

typedef int (*uc_ctl_fn)(void *uc, int control, ...);

typedef struct {
    uint64_t pc;
    uint32_t size;
    uint32_t icount; /* 0: the slot is empty */
    uint32_t bucket; /* index into counter.buckets: the page of pc */
} slot;

typedef struct {
    uint64_t page;
    uint64_t pc;      /* the first block seen in the page: an address of code there (an image may start mid-page) */
    uint64_t pending; /* instructions since the last drain */
} bucket;

typedef struct {
    /* read by Python (icount.py: _Totals): keep these first and in this order */
    uint64_t instructions;
    uint64_t blocks;
    uint64_t bytes;
    uint64_t unknown_blocks; /* blocks whose icount unicorn did not give (counted as none) or not kept by page */
    uint64_t distinct_blocks;
    /* private */
    uc_ctl_fn ctl;
    int request_cache;
    uint64_t mask;
    slot *slots;
    bucket *buckets; /* each page seen, in order of first sight */
    uint32_t nbuckets, bucket_cap;
    uint32_t *bucket_of; /* open-addressed page -> bucket index + 1 (0: empty), bucket_cap * 2 entries */
    uint32_t *dirty;     /* buckets with pending instructions */
    uint32_t ndirty;
} counter;

counter *icount_new(uc_ctl_fn ctl, int request_cache)
{
    counter *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ctl = ctl;
    c->request_cache = request_cache;
    c->mask = (1u << 16) - 1;
    c->slots = calloc(c->mask + 1, sizeof(slot));
    if (!c->slots) {
        free(c);
        return NULL;
    }
    return c;
}

void icount_free(counter *c)
{
    if (c) {
        free(c->slots);
        free(c->buckets);
        free(c->bucket_of);
        free(c->dirty);
        free(c);
    }
}

static inline uint64_t hash(uint64_t pc, uint32_t size)
{
    uint64_t h = (pc ^ ((uint64_t)size << 47)) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static int grow(counter *c)
{
    uint64_t mask = c->mask * 2 + 1;
    slot *slots = calloc(mask + 1, sizeof(slot));
    if (!slots)
        return 0;
    for (uint64_t i = 0; i <= c->mask; i++) {
        slot *s = &c->slots[i];
        if (!s->icount)
            continue;
        uint64_t j = hash(s->pc, s->size) & mask;
        while (slots[j].icount)
            j = (j + 1) & mask;
        slots[j] = *s;
    }
    free(c->slots);
    c->slots = slots;
    c->mask = mask;
    return 1;
}

static inline uint64_t page_hash(uint64_t page)
{
    uint64_t h = page * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
}

/* The bucket of `page`, made on first sight; -1 when out of memory. */
static int64_t bucket_for(counter *c, uint64_t pc)
{
    uint64_t page = pc >> 12;
    if (c->nbuckets == c->bucket_cap) {
        uint32_t cap = c->bucket_cap ? c->bucket_cap * 2 : 1024;
        bucket *buckets = realloc(c->buckets, cap * sizeof(bucket));
        if (buckets)
            c->buckets = buckets;
        uint32_t *dirty = realloc(c->dirty, cap * sizeof(uint32_t));
        if (dirty)
            c->dirty = dirty;
        uint32_t *of = calloc((size_t)cap * 2, sizeof(uint32_t));
        if (!buckets || !dirty || !of) {
            free(of);
            return -1;
        }
        for (uint32_t b = 0; b < c->nbuckets; b++) {
            uint64_t j = page_hash(c->buckets[b].page) & (cap * 2 - 1);
            while (of[j])
                j = (j + 1) & (cap * 2 - 1);
            of[j] = b + 1;
        }
        free(c->bucket_of);
        c->bucket_of = of;
        c->bucket_cap = cap;
    }
    uint64_t mask = (uint64_t)c->bucket_cap * 2 - 1;
    uint64_t j = page_hash(page) & mask;
    while (c->bucket_of[j]) {
        if (c->buckets[c->bucket_of[j] - 1].page == page)
            return c->bucket_of[j] - 1;
        j = (j + 1) & mask;
    }
    c->buckets[c->nbuckets].page = page;
    c->buckets[c->nbuckets].pc = pc;
    c->buckets[c->nbuckets].pending = 0;
    c->bucket_of[j] = ++c->nbuckets;
    return c->nbuckets - 1;
}

static inline void add_to_page(counter *c, uint32_t b, uint32_t icount)
{
    bucket *k = &c->buckets[b];
    if (!k->pending)
        c->dirty[c->ndirty++] = b;
    k->pending += icount;
}

/* Hand over up to `max` (an address of code in the page, instructions) pairs pending since the last drain; returns how many. */
uint32_t icount_drain(counter *c, uint64_t *out, uint32_t max)
{
    uint32_t n = c->ndirty < max ? c->ndirty : max;
    for (uint32_t i = 0; i < n; i++) {
        bucket *k = &c->buckets[c->dirty[c->ndirty - 1 - i]];
        out[2 * i] = k->pc;
        out[2 * i + 1] = k->pending;
        k->pending = 0;
    }
    c->ndirty -= n;
    return n;
}

void icount_block(void *uc, uint64_t pc, uint32_t size, void *user)
{
    counter *c = user;
    c->blocks++;
    c->bytes += size;
    uint64_t i = hash(pc, size) & c->mask;
    for (;;) {
        slot *s = &c->slots[i];
        if (s->icount) {
            if (s->pc == pc && s->size == size) {
                c->instructions += s->icount;
                add_to_page(c, s->bucket, s->icount);
                return;
            }
            i = (i + 1) & c->mask;
            continue;
        }
        /* first execution of this block */
        uc_tb_info tb;
        memset(&tb, 0, sizeof tb);
        if (c->ctl(uc, c->request_cache, pc, &tb) != 0 || tb.pc != pc || tb.size != size || tb.icount == 0) {
            c->unknown_blocks++;
            return;
        }
        c->instructions += tb.icount;
        int64_t b = bucket_for(c, pc);
        if (b < 0 || ((c->distinct_blocks + 1) * 2 > c->mask && !grow(c))) {
            c->unknown_blocks++; /* out of memory: counted, but in no page */
            return;
        }
        add_to_page(c, (uint32_t)b, tb.icount);
        i = hash(pc, size) & c->mask;
        while (c->slots[i].icount)
            i = (i + 1) & c->mask;
        c->slots[i].pc = pc;
        c->slots[i].size = size;
        c->slots[i].icount = tb.icount;
        c->slots[i].bucket = (uint32_t)b;
        c->distinct_blocks++;
        return;
    }
}
