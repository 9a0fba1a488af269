"""chargeyard.services: consumers of the committed events (``store/events.py``).

``billing`` prices ended transactions (tariffs -> CDRs); ``monitoring`` raises and clears
alerts. Each is pure logic over events plus a small storage interface
(``services/storage.py``); ``services/consumer.py`` feeds them from Kafka (consumer groups
``chargeyard-billing`` and ``chargeyard-monitoring``), and on one node the relay's
in-process publisher feeds them from the outbox directly. They import ``core`` and
``store`` only, never the worker or the router.
"""
