"""The OpenAPI 3 description of the coordinator's HTTP port, served at ``/admin/v1/openapi.json``.

Built in code from the same enums the API answers with, so status names and XA codes in the
document cannot drift from the server, and it ships inside the package.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from participant.xa import BranchStatus, TxOutcome, TxStatus, XaCode

__all__ = ["OPENAPI_PATH", "document"]

OPENAPI_PATH = "/admin/v1/openapi.json"
_ID = "^[A-Za-z0-9._:-]{1,64}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Trace-Id": {"$ref": "#/components/headers/TraceId"}},
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Trace-Id": {"$ref": "#/components/headers/TraceId"}},
        "content": {"application/json": {"schema": _ref(schema)}},
    }


_ERRORS = {
    "400": _error("Malformed transaction id, parameter or body."),
    "401": _error("Missing or invalid bearer token."),
    "403": _error("The token's role does not allow this operation."),
    "404": _error("No such transaction (completed ones are kept for history_retention)."),
    "412": _error("The transaction's status forbids the operation; the message names the allowed ones."),
    "413": _error("Request body over 1 MiB."),
    "503": _error("The coordinator is shutting down or overloaded; retry later."),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ERRORS[code] for code in codes}


def _schemas() -> dict[str, Any]:
    string, stamp = {"type": "string"}, {"type": "string", "format": "date-time"}
    trace = {"type": "string", "description": "Also the X-Trace-Id header and the audit record's trace id."}
    branch = {
        "type": "object",
        "required": ["branchId", "rmId", "url", "status", "returnCode", "attempts"],
        "properties": {
            "branchId": {**string, "description": "The branch qualifier (bqual)."},
            "rmId": string,
            "url": {**string, "description": "The participant's gRPC endpoint."},
            "status": _nullable({"type": "string", "enum": [s.label for s in BranchStatus]}),
            "returnCode": _nullable(
                {"type": "string", "enum": [c.name for c in XaCode], "description": "Last XA return code."}
            ),
            "phase": _nullable({**string, "description": "Phase of the last return code."}),
            "reason": _nullable(string),
            "attempts": {"type": "integer", "description": "Calls in the current phase, retries included."},
            "nextRetry": _nullable({**stamp, "description": "When the backoff calls again."}),
        },
    }
    transaction = {
        "type": "object",
        "required": ["txid", "status", "begunAt", "ageSeconds", "timeoutMs", "branches"],
        "properties": {
            "txid": {**string, "description": "The gtrid."},
            "status": {"type": "string", "enum": [s.label for s in TxStatus]},
            "decision": _nullable({"type": "string", "enum": ["commit", "rollback"]}),
            "begunAt": stamp,
            "ageSeconds": {"type": "number"},
            "deadline": stamp,
            "timeoutMs": {"type": "integer"},
            "completedAt": _nullable(stamp),
            "onePhase": {"type": "boolean"},
            "recovered": {"type": "boolean", "description": "Rebuilt from the log after a restart."},
            "rollbackCode": _nullable({"type": "string", "enum": [c.name for c in XaCode]}),
            "rollbackReason": _nullable(string),
            "branches": {"type": "array", "items": _ref("Branch")},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "traceId"],
            "properties": {
                "error": {**string, "description": "One line saying what to do."},
                "traceId": trace,
            },
        },
        "Branch": branch,
        "Transaction": {**transaction, "properties": {**transaction["properties"], "traceId": trace}},
        "TransactionList": {
            "type": "object",
            "required": ["transactions", "nextPageToken", "traceId"],
            "properties": {
                "transactions": {"type": "array", "items": _ref("TransactionSummary")},
                "nextPageToken": _nullable({**string, "description": "Pass as pageToken for the next page."}),
                "traceId": trace,
            },
        },
        "TransactionSummary": transaction,
        "Completion": {
            "type": "object",
            "required": ["txid", "status", "transactionStatus", "branches", "traceId"],
            "properties": {
                "txid": string,
                "status": {
                    "type": "string",
                    "enum": [o.name for o in TxOutcome],
                    "description": "tx.h outcome of the request.",
                },
                "transactionStatus": {"type": "string", "enum": [s.label for s in TxStatus]},
                "branches": {"type": "array", "items": _ref("Branch")},
                "traceId": trace,
            },
        },
        "ResolveRequest": {
            "type": "object",
            "required": ["outcome", "reason"],
            "additionalProperties": False,
            "properties": {
                "outcome": {
                    "type": "string",
                    "enum": ["committed", "rolledback"],
                    "description": "What happened to the branch at its resource manager, as the operator "
                    "knows it: recorded as XA_HEURCOM or XA_HEURRB.",
                },
                "reason": {"type": "string", "minLength": 1, "maxLength": 200},
            },
        },
        "ForgetRequest": {
            "type": "object",
            "required": ["txids"],
            "additionalProperties": False,
            "properties": {
                "txids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "items": {"type": "string", "pattern": _ID},
                }
            },
        },
        "ForgetResponse": {
            "type": "object",
            "required": ["results", "traceId"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["txid", "forgotten", "error", "code"],
                        "properties": {
                            "txid": string,
                            "forgotten": {"type": "boolean"},
                            "error": _nullable({**string, "description": "Why it was not forgotten."}),
                            "code": _nullable(
                                {**string, "description": "gRPC status of the refusal, e.g. NOT_FOUND."}
                            ),
                        },
                    },
                },
                "traceId": trace,
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "node"],
            "properties": {"status": string, "node": string, "traceId": trace},
        },
    }


def _version() -> str:
    try:
        return version("xatm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def document() -> dict[str, Any]:
    gtrid = {
        "name": "gtrid",
        "in": "path",
        "required": True,
        "description": "Global transaction id, as listed.",
        "schema": {"type": "string", "pattern": _ID},
    }
    reason = {
        "name": "reason",
        "in": "query",
        "required": False,
        "description": "Recorded in the audit log.",
        "schema": {"type": "string", "maxLength": 200},
    }
    trace_header = {"$ref": "#/components/parameters/TraceId"}
    forced = {
        "parameters": [gtrid, reason, trace_header],
        "responses": {
            "200": _ok("Completion", "The request was carried out; status is its tx.h outcome."),
            **_errors("400", "401", "403", "404", "412", "503"),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "xatm coordinator admin API",
            "version": _version(),
            "description": "Inspect and operate XA transactions. Errors map as follows: 400 "
            "malformed, 401 no/bad token, 403 role too weak, 404 unknown gtrid, 412 status forbids, "
            "503 unavailable. Roles: viewer reads; operator also forces and forgets.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/admin/v1/xa-transaction": {
                "get": {
                    "operationId": "listTransactions",
                    "summary": "List transactions, oldest first",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "description": "Only these statuses (repeat or comma-separate).",
                            "schema": {
                                "type": "array",
                                "items": {"type": "string", "enum": [s.label for s in TxStatus]},
                            },
                            "style": "form",
                            "explode": True,
                        },
                        {
                            "name": "begin",
                            "in": "query",
                            "required": False,
                            "description": "Only transactions begun at or after this RFC 3339 time "
                            "(UTC if no offset) or Unix time in seconds.",
                            "schema": {
                                "anyOf": [
                                    {"type": "string", "format": "date-time"},
                                    {"type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{1,9})?$"},
                                ]
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {
                            "name": "pageToken",
                            "in": "query",
                            "required": False,
                            "description": "nextPageToken of the previous page.",
                            "schema": {"type": "string", "pattern": "^[0-9]{0,12}$"},
                        },
                        trace_header,
                    ],
                    "responses": {
                        "200": _ok("TransactionList", "One page of transactions."),
                        **_errors("400", "401", "403", "503"),
                    },
                }
            },
            "/admin/v1/xa-transaction/{gtrid}": {
                "get": {
                    "operationId": "getTransaction",
                    "summary": "Show a transaction and its branches",
                    "parameters": [gtrid, trace_header],
                    "responses": {
                        "200": _ok("Transaction", "The transaction."),
                        **_errors("400", "401", "403", "404", "503"),
                    },
                },
                "put": {
                    "operationId": "forceCommit",
                    "summary": "Force commit (only from Created, Preparing, Committing); audited",
                    **forced,
                },
                "delete": {
                    "operationId": "forceRollback",
                    "summary": "Force rollback (only from Created, Preparing, Rollingback); audited",
                    **forced,
                },
            },
            "/admin/v1/xa-transaction/{gtrid}/branches/{bqual}/resolve": {
                "post": {
                    "operationId": "resolveBranch",
                    "summary": "Close a branch whose resource manager is gone for good, stating its outcome "
                    "(a heuristic decision; only for a branch still owed an answer in Committing or "
                    "Rollingback); audited",
                    "parameters": [
                        gtrid,
                        {
                            "name": "bqual",
                            "in": "path",
                            "required": True,
                            "description": "Branch qualifier (branchId), as shown.",
                            "schema": {"type": "string", "pattern": _ID},
                        },
                        trace_header,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ResolveRequest")}},
                    },
                    "responses": {
                        "200": _ok(
                            "Completion", "The branch is closed; status is the transaction's outcome."
                        ),
                        **_errors("400", "401", "403", "404", "412", "413", "503"),
                    },
                }
            },
            "/admin/v1/xa-transaction/bulk": {
                "post": {
                    "operationId": "forget",
                    "summary": "Forget heuristically completed transactions; audited",
                    "parameters": [trace_header],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ForgetRequest")}},
                    },
                    "responses": {
                        "200": _ok("ForgetResponse", "One result per id."),
                        **_errors("400", "401", "403", "413", "503"),
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors("401"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness; open without a token",
                    "security": [],
                    "responses": {
                        "200": _ok("Health", "Serving."),
                        "503": _ok("Health", "Shutting down."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics; open without a token (no transaction ids in labels)",
                    "security": [],
                    "responses": {
                        "200": {"description": "Prometheus text format.", "content": {"text/plain": {}}}
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "TraceId": {"description": "Trace id of this request.", "schema": {"type": "string"}}
            },
            "parameters": {
                "TraceId": {
                    "name": "X-Trace-Id",
                    "in": "header",
                    "required": False,
                    "description": "Used as the request's trace id when well-formed; else one is made.",
                    "schema": {"type": "string"},
                }
            },
            "schemas": _schemas(),
        },
    }
