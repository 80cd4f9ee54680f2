"""Partial FC: class centres sharded across replicas, sampled negatives, an exact cross-shard softmax.

Why: a margin head's centre matrix grows with the class count.  With the plain head every replica holds
all of it, its optimizer slots and its dense gradient, and all-reduces that gradient every step: fine for
MS1M's 85k classes, not for Glint360K's 360k or WebFace42M's 2M.  arcface_torch's Partial FC (An et al.,
2022) is what lets insightface train those; this is the same idea on tf.distribute, in our one loop.

* Model-parallel centres.  Replica r of R owns the centres of classes [r*n, min(C, (r+1)*n)) with
  n = ceil(C / R) (the last shard is ragged), as a (rows, embedding_size) matrix on its own device.
* Exact softmax across shards.  The embeddings and labels of the global batch are all-gathered; each
  replica computes cosines with its own centres only; the margin (heads.py's ``target_logit``) is
  applied on the shard that owns a sample's class; the cross-entropy uses the all-reduced max and sum
  of exponentials and the target logit from the owning shard, so it equals the full softmax.
* Gradients.  The cross-entropy has a custom gradient, softmax - one_hot, local to the shard (no
  gradient flows back through the all-reduces, which would count every shard R times).  The embeddings'
  gradient reaches every replica through ``all_gather``'s own gradient (an all-reduce of a (B, D) matrix,
  summing every shard's part); the centres' gradient stays on its replica and is never all-reduced.
* Sampling (``sample_rate`` < 1).  Each optimizer update, every shard keeps the centres of the classes
  present in the global batch (all micro-batches) plus random other centres up to sample_rate x its
  rows (all positives when there are more), drawn from a seed, the shard and the update count, so a
  run and its resumed copy sample alike.  Only those rows enter the logits and receive an update.

How the per-replica centres exist in TensorFlow: as plain ``tf.Variable`` s, one per local replica,
created outside the strategy's scope under ``tf.device`` of that replica's device (a variable created
inside the scope would be mirrored: one full copy per replica, kept equal by all-reduce, which is
exactly what must not happen).  Inside ``strategy.run`` the replica id is a constant per traced
replica function, so each replica's code reads and writes its own shard; the updates run in replica
context with training/partial_fc_step.py.  Under MultiWorkerMirroredStrategy each process creates only
the shards of its own replicas.  They are not in the TensorFlow checkpoint (a worker's checkpoint holds
no other worker's variables): training/centre_checkpoints.py writes one file set per shard.

The margin is not here: this module only supplies cosines and targets and calls the head's margin.
"""

from __future__ import annotations

import tensorflow as tf

from face_recognition_tf.models.heads import check_labels

INIT_STDDEV = 0.01  # heads.py's margin heads draw their kernel from N(0, 0.01) too
INIT_BLOCK = 4096  # classes per independently seeded block of initial centres
MARGIN_HEADS = ("arcface", "cosface", "combined", "sphereface")


def shard_bounds(num_classes: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Classes [start, end) of `shard`: ceil(C / R) each, the last one ragged."""
    size = -(-int(num_classes) // int(num_shards))
    start = min(int(num_classes), int(shard) * size)
    return start, min(int(num_classes), start + size)


def check_layout(num_classes: int, num_shards: int) -> None:
    """Every shard must own at least one class (an empty shard has no softmax part to contribute)."""
    start, end = shard_bounds(num_classes, num_shards, num_shards - 1)
    if end <= start:
        raise ValueError(f"partial FC: {num_classes} classes over {num_shards} replicas leaves the last "
                         f"replica without classes (ceil({num_classes}/{num_shards}) each); it is meant "
                         "for large class counts: turn head.partial_fc off")


def num_sampled(rows: int, sample_rate: float) -> int:
    """Rows a shard keeps per update before adding positives that do not fit (arcface_torch's rule)."""
    return rows if sample_rate >= 1.0 else max(1, min(rows, int(sample_rate * rows)))


def initial_centres(embedding_size: int, start: int, end: int, seed: int) -> tf.Tensor:
    """Initial centres of classes [start, end): N(0, 0.01), drawn per block of 4096 classes from
    (seed, block), so a class starts from the same centre whatever the replica count."""
    parts = []
    for block in range(start // INIT_BLOCK, (end - 1) // INIT_BLOCK + 1):
        rows = tf.random.stateless_normal([INIT_BLOCK, embedding_size], seed=[int(seed), block], stddev=INIT_STDDEV)
        base = block * INIT_BLOCK
        parts.append(rows[max(start, base) - base:min(end, base + INIT_BLOCK) - base])
    return tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]


class CentreShard:
    """One replica's slice of the centres and its optimizer slots, on that replica's device."""

    def __init__(self, index: int, start: int, end: int, embedding_size: int, device, slot_names, seed: int):
        self.index, self.start, self.end, self.device = int(index), int(start), int(end), device
        with tf.device(device):
            self.weight = tf.Variable(initial_centres(embedding_size, start, end, seed), trainable=False,
                                      name=f"centres_{index}")
            self.slots = {name: tf.Variable(tf.zeros([end - start, embedding_size]), trainable=False,
                                            name=f"centres_{index}_{name}") for name in slot_names}

    @property
    def rows(self) -> int:
        return self.end - self.start

    def variables(self) -> dict:
        return {"weight": self.weight, **self.slots}


class _Replicas:
    """The collectives the sharded softmax needs, or identities when there is one replica.

    Inputs are pinned to the replica's device first: MultiWorkerMirroredStrategy takes a collective's
    destination from its input's device, and a tensor traced without one is refused ("destinations can
    not be empty").
    """

    def __init__(self, num: int, device):
        self.num, self.device = int(num), device
        self.ctx = tf.distribute.get_replica_context() if self.num > 1 else None

    def _placed(self, x):
        with tf.device(self.device):
            return tf.identity(x)

    def gather(self, x):
        return x if self.num == 1 else self.ctx.all_gather(self._placed(x), axis=0)

    def sum(self, x):
        return x if self.num == 1 else self.ctx.all_reduce(tf.distribute.ReduceOp.SUM, self._placed(x))

    def stack(self, x):
        """(B,) per replica -> (R, B), replica order."""
        return x[None] if self.num == 1 else self.ctx.all_gather(self._placed(x[None]), axis=0)


def replica_id() -> int:
    """This replica's global index, a Python int (each replica function is traced separately)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        raise RuntimeError("partial FC runs in replica context (inside strategy.run)")
    value = tf.get_static_value(ctx.replica_id_in_sync_group)
    if value is None:
        raise RuntimeError("partial FC needs a strategy whose replica id is known when tracing")
    return int(value)


def sharded_cross_entropy(logits, targets, replicas: _Replicas, first_row, rows):
    """Softmax cross-entropy over all shards' logits, for this replica's own examples.

    `logits` (B, K): the global batch against this shard's (sampled) centres; `targets` (n, 2): (row,
    column) of the examples whose class this shard owns.  Returns the losses of rows [first_row,
    first_row + rows) of the global batch.  Gradient: (softmax - one_hot) x upstream, with the upstream
    of every row (each replica holds only its own rows' upstream, so it is all-gathered).  No (B, K)
    one-hot matrix is made: the target entries are gathered and scattered by index.
    """
    batch = tf.shape(logits)[0]

    @tf.custom_gradient
    def ce(logits):
        top = tf.reduce_max(replicas.stack(tf.reduce_max(logits, axis=1)), axis=0)
        exp = tf.exp(logits - top[:, None])
        picked = tf.scatter_nd(targets[:, :1], tf.gather_nd(logits, targets), [batch])
        # one all-reduce for both sums: the sum of exponentials and the target logit (from its owner)
        total, picked = tf.unstack(replicas.sum(tf.stack([tf.reduce_sum(exp, axis=1), picked])))
        loss = tf.math.log(total) + top - picked
        mine = loss[first_row:first_row + rows]

        def grad(upstream):
            every = replicas.gather(upstream)
            softmax = exp * (every / total)[:, None]
            return tf.tensor_scatter_nd_sub(softmax, targets, tf.gather(every, targets[:, 0]))

        return mine, grad

    return ce(logits)


class PartialFC:
    """The sharded centre store of a margin head.  Stands where the trainer keeps its head.

    Not a Keras layer on purpose: it has no mirrored weights, nothing for the Keras optimizer or the
    TensorFlow checkpoint (``trainable_variables``, ``weights`` and ``losses`` are empty); its shards
    are updated and checkpointed by the trainer's partial-FC hooks.
    """

    def __init__(self, margin, num_classes: int, embedding_size: int, *, num_shards: int = 1,
                 local_shards=((0, None),), sample_rate: float = 1.0, seed: int = 0, slot_names=(),
                 l2_factor: float = 0.0):
        if not 0.0 < float(sample_rate) <= 1.0:
            raise ValueError(f"partial FC sample_rate must be in (0, 1], got {sample_rate}")
        check_layout(num_classes, num_shards)
        self.margin = margin
        self.s = float(margin.s)
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.num_shards = int(num_shards)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.slot_names = tuple(slot_names)
        self.l2_factor = float(l2_factor)
        self.shards = {}
        for index, device in local_shards:
            start, end = shard_bounds(num_classes, num_shards, index)
            self.shards[int(index)] = CentreShard(index, start, end, embedding_size, device, self.slot_names, seed)

    # what the trainer's generic code reads from a head: nothing trains through Keras here
    trainable_variables = property(lambda self: [])
    non_trainable_variables = property(lambda self: [])
    weights = property(lambda self: [])
    losses = property(lambda self: [])

    def begin_step(self, label_batches, iteration) -> "CentreStep":
        """In replica context, once per optimizer update: pick this shard's rows for the update."""
        shard_id = replica_id() if self.num_shards > 1 else next(iter(self.shards))
        if shard_id not in self.shards:
            raise RuntimeError(f"partial FC: replica {shard_id} has no centre shard in this process")
        return CentreStep(self, self.shards[shard_id], label_batches, iteration)


class CentreStep:
    """One replica's view of one optimizer update: its sampled rows, losses, and what to update."""

    def __init__(self, pfc: PartialFC, shard: CentreShard, label_batches, iteration):
        self.pfc, self.shard = pfc, shard
        self.replicas = _Replicas(pfc.num_shards, shard.device)
        self.iteration = iteration
        if pfc.sample_rate >= 1.0:
            self.index = None
            self.weight = tf.convert_to_tensor(shard.weight)
        else:
            labels = tf.concat([check_labels(y, pfc.num_classes) for y in label_batches], axis=0)
            self.index = self._sample(self.replicas.gather(labels), iteration)
            self.weight = tf.gather(shard.weight, self.index)

    @property
    def sources(self) -> list:
        """What the tape differentiates for the centres: this update's (sampled) rows."""
        return [self.weight]

    def _sample(self, labels, iteration):
        shard = self.shard
        local = labels - shard.start
        inside = (local >= 0) & (local < shard.rows)
        hits = tf.boolean_mask(local, inside)
        positive = tf.scatter_nd(hits[:, None], tf.ones_like(hits), [shard.rows]) > 0
        count = tf.maximum(num_sampled(shard.rows, self.pfc.sample_rate),
                           tf.reduce_sum(tf.cast(positive, tf.int32)))
        seed = tf.stack([tf.constant(self.pfc.seed * 1_000_003 + shard.index, tf.int64), tf.cast(iteration, tf.int64)])
        score = tf.where(positive, 2.0, tf.random.stateless_uniform([shard.rows], seed=seed))
        return tf.sort(tf.math.top_k(score, k=count, sorted=False).indices)

    def _targets(self, labels):
        """(column in this update's rows, owned by this shard) of every global label."""
        local = labels - self.shard.start
        inside = (local >= 0) & (local < self.shard.rows)
        local = tf.where(inside, local, 0)
        if self.index is None:
            return local, inside
        column = tf.searchsorted(self.index[None], local[None])[0]
        column = tf.minimum(column, tf.shape(self.index)[0] - 1)
        owned = inside & tf.equal(tf.gather(self.index, column), local)
        return tf.where(owned, column, 0), owned

    def per_example_loss(self, embeddings, labels):
        """(cross-entropy, closest centre is the own class) of this replica's examples (B_local,)."""
        pfc, replicas = self.pfc, self.replicas
        labels = check_labels(labels, pfc.num_classes)
        x = tf.cast(embeddings, tf.float32)
        rows = tf.shape(x)[0]
        sizes = replicas.gather(rows[None])
        first = tf.reduce_sum(sizes[:replica_id()]) if pfc.num_shards > 1 else 0
        x, labels = replicas.gather(x), replicas.gather(labels)
        cos = tf.matmul(tf.math.l2_normalize(x, axis=1, epsilon=1e-12),
                        tf.math.l2_normalize(self.weight, axis=1, epsilon=1e-12), transpose_b=True)
        cos = tf.clip_by_value(cos, -1.0, 1.0)
        target, owned = self._targets(labels)
        owned_rows = tf.cast(tf.where(owned)[:, 0], tf.int32)
        targets = tf.stack([owned_rows, tf.gather(target, owned_rows)], axis=1)  # (row, column) owned here
        # the margin on this shard's targets, added into s * cos by index (no (B, K) one-hot temporaries)
        chosen = tf.gather_nd(cos, targets)[:, None]
        moved = pfc.margin.target_logit(chosen) - chosen
        logits = tf.tensor_scatter_nd_add(pfc.s * cos, targets, pfc.s * moved[:, 0])
        loss = sharded_cross_entropy(logits, targets, replicas, first, rows)
        return loss, self._hits(tf.stop_gradient(cos), labels, first, rows)

    def _hits(self, cos, labels, first, rows):
        """The training accuracy without gathering logits: each shard's best, then the best shard."""
        column = tf.argmax(cos, axis=1, output_type=tf.int32)
        cls = self.shard.start + (column if self.index is None else tf.gather(self.index, column))
        best = self.replicas.stack(tf.reduce_max(cos, axis=1))
        classes = self.replicas.stack(cls)
        winner = tf.argmax(best, axis=0, output_type=tf.int32)
        predicted = tf.gather(tf.transpose(classes), winner, axis=1, batch_dims=1)
        return tf.equal(predicted, labels)[first:first + rows]

    def reg_loss(self):
        """The L2 term of this shard's rows (train.regularization l2), times R: the trainer divides every
        replica's reg loss by R (each normally holds the whole model), but shards are disjoint."""
        if self.pfc.l2_factor <= 0:
            return tf.constant(0.0)
        return self.pfc.num_shards * self.pfc.l2_factor * tf.reduce_sum(tf.square(self.weight))
