"""No import cycles anywhere in the project (issue 12): a cycle through a function-level import is
still a cycle, and grimp (import-linter's graph) sees those too."""

from __future__ import annotations

import grimp


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("orchestrator", "workers", "search_space", "bench", cache_dir=None)
    cycles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    )
    assert cycles == [], f"import cycles through: {cycles}"
