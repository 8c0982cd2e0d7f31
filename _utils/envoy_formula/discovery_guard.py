"""
The sweep guard's rule (docs/discovery.md, "The sweep guard"), shared by the discovery service
(its sweeps and reads) and the master's presence cleanup (``_runners/discovery.py``): when more than
``min_hosts`` and more than the share ``fraction`` of a group leave at once, that is an outage on
the watcher's side (a registration outage, a master restart) to hold, not hosts to remove.
"""


def holds(total, gone, fraction=0.5, min_hosts=1):
    return gone > min_hosts and gone > fraction * total
