"""Query/Retrieve over the catalog: the C-FIND query engine (docs/query-retrieve.md).

``model`` holds the information models and their keys, ``matching`` turns an
identifier into a ``Query`` and parameterised SQL, ``find`` streams the
response identifiers. The DIMSE service module calls ``find``; nothing here
knows about associations or the network.
"""

from .errors import (
    IdentifierError,
    OutOfResources,
    QueryCancelled,
    QueryError,
    UnableToProcess,
)
from .find import Response, find, find_responses
from .matching import Query, Term, build_sql, identifier_from_params, parse_identifier
from .model import KEYS, InformationModel, Key, KeyType, Level, Match

__all__ = [
    "KEYS", "IdentifierError", "InformationModel", "Key", "KeyType", "Level", "Match", "OutOfResources",
    "Query", "QueryCancelled", "QueryError", "Response", "Term", "UnableToProcess", "build_sql", "find",
    "find_responses",
    "identifier_from_params", "parse_identifier",
]
