"""Jobs: the contract (states, schemas), the store that is the one writer of status, and its Lua scripts."""
