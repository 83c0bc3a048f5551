"""Same-model peers for `make bench` (issue 17, item 1): Standing's scoring model as a
competent user of quixstreams (quix_model) and of Pathway (pathway_model) writes it,
run on the bench's pre-produced events and checked against `standing reference`
before their rates count (run).

First measurement, ``python -m standing.peers.run --users 20000 --events 140000``
(default rules, 8 partitions, 2 cores shared with other test runs, so the figures
are noisy; commit dc0f152):

    peer                               events/s  seconds  peak RSS  max |diff|  note
    quixstreams                             117   1192.0  1089 MiB      0.0127  33.0 messages/event
    pathway                                 690    203.0  2196 MiB      0.0111  3 minibatches
    pathway (max_backlog_size=10000)         92   1528.2  2764 MiB      0.0111  26 minibatches

All three within the bound epsilon / (1 - alpha) = 0.0143 for all 20,000 users.
"""
