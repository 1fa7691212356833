"""What the schema fuzzer (schemathesis, run by test_api_schema.py) is told beyond the schema.

Loaded into schemathesis's own process (``SCHEMATHESIS_HOOKS``), a check that replaces its
``positive_data_acceptance`` (a valid request must not be refused), except for two refusals that
are right:

- ``user`` in a published event is a user's key: any integer is well-formed, but only an existing
  user's is accepted, which no schema can say. A 400 on that field alone, for that reason, is the
  right answer.
- schemathesis 4.32 labels some cases of its coverage phase "positive" while one of their parts
  was generated invalid (an integer for the ``Last-Event-ID`` header, for instance): those are
  not valid requests.
"""

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


@schemathesis.check
def valid_requests_accepted(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    components = case.meta.components.values() if case.meta else []
    if not all(component.mode.is_positive for component in components):
        return None
    if response.status_code == 400 and _no_such_user(response):
        return None
    return positive_data_acceptance(ctx, response, case)


def _no_such_user(response: schemathesis.Response) -> bool:
    errors = response.json().get("errors", {})
    return list(errors) == ["user"] and all("does not exist" in m for m in errors["user"])
