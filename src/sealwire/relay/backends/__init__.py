"""The relay's queue backends behind one interface (:mod:`.base`): the embedded one
(:mod:`.sqlite`, one relay process) and the cluster one (:mod:`.nats`, NATS JetStream; an
optional extra, so nothing here imports it)."""
