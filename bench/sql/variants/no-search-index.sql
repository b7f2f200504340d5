-- Scratch: no full-text search index on messages (what its upkeep costs).
DROP INDEX messages_search;
