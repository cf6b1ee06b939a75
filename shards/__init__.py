"""One trio shard process: accepts from the shared socket, serves WebSocket connections."""
