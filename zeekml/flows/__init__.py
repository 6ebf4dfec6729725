"""Columnar flow tables: conn records of any source in one canonical Arrow schema."""
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch

__all__ = ["CONN_SCHEMA", "conn_table", "is_conn_batch"]
