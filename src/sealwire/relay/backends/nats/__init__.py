"""The cluster relay backend: any number of relay nodes share one NATS JetStream.

Every node runs its own :class:`NatsBackend` on the same ``prefix``; any node serves any
address. Layout (``P`` is the prefix, ``X`` is ``x`` followed by the hex of the bytes, so no
subject token or KV key is ever empty)::

    stream P_QUEUE      subjects P.q.X(recipient)   one message per queued envelope
    stream P_NOTICES    subjects P.n.X(organisation) one message per expiry notice
    KV P_bytes          X(recipient).in  -> envelope bytes ever reserved (decimal ASCII)
                        X(recipient).out -> envelope bytes ever given back (decimal ASCII)
    KV P_orgs           X(organisation) -> root key
    KV P_servers        X(server) -> X(organisation)
    KV P_revoked        X(organisation).X(address) -> b"1"
    core P.sig.q.X(recipient)   "an envelope was queued", carrying it (to nodes that watch)
    core P.sig.n                "a notice was queued" (payload: the organisation)
    core P.act.X(key)           activation routing requests (request/reply)

Decisions and what they guarantee:

* **Durability.** :meth:`NatsBackend.enqueue` returns once JetStream sent its PubAck, i.e. the
  message is written to the stream's file store (and, with ``replicas`` > 1 on a clustered
  server, to a quorum of replicas, so it survives the loss of a server). Losing a *relay node*
  loses nothing: relay nodes keep no durable state. JetStream's file store does not fsync each
  message by default (``sync_interval``, 2 minutes); a server crash (not a relay crash) can
  lose the last writes of a single-replica stream, exactly as NATS documents. Use R3 in
  production. Publishes (envelopes and byte-counter updates) are pipelined over one reply
  subscription (:class:`_Publisher`), not one request each.
* **The enqueue path** is two JetStream round trips in a row, reserve bytes then publish
  (running them concurrently would store envelopes the quota then refuses), plus one core
  publish of the signal that waits for nothing. Concurrent reservations of one address on
  one node are one compare-and-set.
* **Delivery ids** are the stream sequence as 8 bytes big-endian: stable, never reused (the
  stream's last sequence survives deletions and restarts), and in acceptance order.
* **Direct hand-over.** The node that stored an envelope calls ``envelope_queued(recipient,
  stored)`` with it at once (in delivery-id order: PubAcks arrive in stream order), and
  publishes the same to the nodes watching the recipient: ``P.sig.q.X(recipient)`` carries
  version (1 byte), sequence (8), accepted_at (8, signed) and the envelope; an envelope too
  large to fit beside them in ``max_payload`` goes as an empty signal ("read pending"). A
  watching node decodes it strictly (:func:`_decode_signal`: exact layout, version 1, a
  non-zero sequence, no more than ``max_bytes`` of envelope) and passes it on with
  ``stored``; anything else is logged without details and passed on *without* ``stored``,
  so the session reads :meth:`pending`. A signal is trusted only to deliver its bytes under
  its id (which the client drops if it is a duplicate): acknowledging an id learnt from a
  signal still checks with the stream that it belongs to the acknowledging address.
  Most envelopes therefore never need a read; :meth:`pending` remains for reconnects,
  backlogs and lost signals.
* **Signals are at most once and may be reordered** between nodes: core NATS, published
  after the store succeeded. A signal is lost if the publishing node dies after its PubAck,
  while a node is disconnected from NATS, or when a watching node is a slow consumer. For
  the last two the node then tells every affected watched address bare
  ``envelope_queued(recipient)`` (after the reconnect / on the slow-consumer error); the
  first is only caught by the next read. Signals from different nodes interleave in any
  order. Subscribing to the queue subjects instead would also signal envelopes the stream
  refused (core subscribers see every publish). A node skips its own signals (header
  ``Sealwire-Node``) because it already delivered them locally. ``notice_queued`` is
  signalled once per organisation per :meth:`expire` call.
* **Reads are stateless**: :meth:`pending`, :meth:`notices` and :meth:`expire` walk a subject
  without consumer state kept between calls, so any node reads any queue and acknowledging
  is deleting. A walk takes its first :data:`WALK_FIRST` messages with *direct* gets ("next
  message on subject", any replica answers: cheapest when a queue holds one or two), then
  reads on in batches of up to its limit through a throw-away consumer (ephemeral, filtered,
  starting at the next sequence, no acks, in memory, one fetch, deleted right after
  without waiting and by the server after :data:`CONSUMER_IDLE_S` if that is lost). A
  replica may lag the leader, but it holds a prefix of the leader's log, so only the end of
  a walk can be short: a walk that reaches the end asks the leader once more, and so sees
  every envelope whose enqueue returned, on any node, before the walk began. A lagging
  replica can also still show an envelope the leader already deleted: the client drops it
  as a duplicate by id, and acknowledging it again is a no-op.
* **Acknowledging.** When the ids acknowledged together (three or more) are exactly the
  oldest envelopes of the queue, which one read of that many confirms, one purge of the
  subject below the newest of them deletes them all (nothing can appear later below a
  sequence that exists). Otherwise each is deleted by sequence, after checking that it is
  this queue's (a node remembers, bounded, the queue and size of sequences it stored or
  read, so that check is usually free; otherwise a direct get). Deletes are the JetStream
  server's bottleneck (~4,000/s on one test server), which the purge avoids. A delete
  overwrites the envelope on disk ("erase"); a purge only drops it, the bytes stay in the
  block file until JetStream compacts or removes it (envelopes are sealed end to end).
* **Count quota** is exact cluster-wide: ``max_msgs_per_subject`` with ``discard=new`` and
  ``discard_new_per_subject`` makes the stream refuse the publish (API error 10077), which
  becomes :class:`~sealwire.errors.QueueFull`.
* **Byte quota.** JetStream has no per-subject byte limit, so each recipient has two
  monotonic counters in the ``P_bytes`` bucket: ``in``, the bytes ever reserved for it, and
  ``out``, the bytes ever given back; the bytes it uses are ``in - out``. Both only grow
  (Python integers; a 64-bit range would last centuries at 1 GB/s), each is changed only by
  compare-and-set on its KV revision, and concurrent changes to one counter on one node are
  coalesced into one compare-and-set (group commit). An enqueue reserves its bytes on ``in``
  *before* it publishes, and gives them back on ``out`` if the publish is refused;
  acknowledge and expire give them back on ``out`` after their delete succeeded (the delete
  is the claim, so each envelope is given back once; a purge whose count falls short,
  because another node deleted some of them meanwhile, gives back only the smallest of
  them, so the usage errs high). Reserving and giving back write different keys, so the
  enqueuing node and the acknowledging node never conflict; only nodes enqueuing to (or
  only nodes giving back for) the same address at the same moment do, and they retry on the
  revision conflict. A reservation is decided on this node's mirrors (``in`` is current
  unless another node reserved meanwhile, which the compare-and-set then catches; the
  mirror of ``out``, kept by the KV watch, can only lag *below* the truth, which errs towards
  refusing) and confirmed by the compare-and-set on ``in``: no KV read on the enqueue path.
  A refusal is decided only after reading ``out`` fresh, so a lagging mirror never refuses.
  Guarantee: the bytes queued for an address never exceed ``max_bytes`` (reservations
  precede storage, and ``out`` grows only after a delete). A relay node that dies between
  reserving and publishing, or between deleting and giving back, leaves the usage too high
  by that envelope (the quota errs towards refusing); a publish that times out, or an
  enqueue cancelled while it publishes, keeps its reservation for the same reason (the
  envelope may have been stored). Nothing yet corrects such a drift. Concurrent
  reservations that later fail on the count quota may briefly refuse others. Counters of
  the earlier single-key layout (``X(recipient)`` -> bytes) are ignored: do not mix node
  versions on one prefix.
* **Depth** is the stream's message count and the sum of ``in - out``, which every node
  mirrors through a KV watch: exact on one node when idle, eventually exact in a cluster, and
  including reservations in flight.
* **Expiry** walks the stream from its first message while envelopes are old (the stream is
  in acceptance order; an envelope accepted out of order by a skewed clock waits behind a
  younger one until that one expires too, and :meth:`pending` hides it meanwhile). For each,
  the *delete is the claim*: only the node whose delete succeeded (not another node's expire,
  not an acknowledge) publishes the notice, so an envelope is reported at most once and, with
  the retries under one ``Nats-Msg-Id`` (the stream deduplicates within an hour), exactly once
  unless that node dies between delete and publish (then the notice is lost, never doubled).
  The server's ``max_age`` (lifetime plus a day) is only a backstop that reports nothing.
* **Organisations, servers, revocations** live in KV buckets, mirrored in memory on every node
  and kept current by KV watches, so lookups need no request. A node signals a change it did
  itself at once; other nodes' changes are signalled when their watch sees a key that is new
  to the mirror (a revocation of several addresses reaches other nodes as one signal per
  address). An organisation's root is set once (KV create); a different root for the same
  organisation raises :class:`~sealwire.errors.StorageError`.
* **Activation routing**: each attached key is also a core subscription; a node that routed a
  request successfully replies, others stay silent, so the requester gets ``False`` on "no
  responders" at once or after a short timeout. If two nodes have attached the same key,
  the first to answer wins (not necessarily the most recent attachment).
* **Errors**: every NATS error or timeout becomes :class:`~sealwire.errors.StorageError`
  (every request has a timeout, so a disconnected cluster fails calls rather than hanging);
  nats-py reconnects by itself. A publish made while disconnected waits in nats-py's buffer
  and may still be stored after its call failed with StorageError: the sender's retry then
  queues the same envelope twice, which the recipient drops as a replay. Every wait on NATS
  is bounded: requests, PubAcks and batch reads by ``timeout``, a publish into a full
  outbound buffer by ``flush_timeout``, and a byte-counter change by its bounded
  compare-and-set loop; no lock is held across an await.
"""

from .backend import NatsBackend

__all__ = ["NatsBackend"]
