"""The Kafka broker the tests start is the product's (``chargeyard.kafka_broker``)."""

from chargeyard.kafka_broker import (KAFKA_VERSION, POM, KafkaBroker, cache_dir, ensure_jars,  # noqa: F401
                                     free_port, java_bin, metadata_brokers)
