"""The WAN: a Toxiproxy-compatible fault proxy (server and client) and site partitions."""
