"""The edge between Envoy's ext_proc protobufs and plain Python: header maps and response builders."""
