import pytest
from remote_code import generate_in_fresh_process
from tiny_models import make_scaledown


@pytest.mark.parametrize("auto_class", ["AutoModelForCausalLM", "AutoModel"])
@pytest.mark.parametrize("variant", [("llama", "n_layers"), ("mistral", "encoder")], ids=["n_layers", "encoder"])
def test_fresh_process_loads_with_trust_remote_code(tmp_path, rag_batch, variant, auto_class):
    model = make_scaledown(*variant, enable_reranking=True)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    questions, documents = rag_batch
    expected = model.generate_from_text(questions, documents, max_new_tokens=8)
    result = generate_in_fresh_process(
        folder, questions, documents, tmp_path / "modules", auto_class=auto_class, max_new_tokens=8
    )
    assert result["answers"] == expected
    assert result["class_module"].startswith("transformers_modules")
    assert not result["scaledown_imported"]
    assert "trust_remote_code" not in result["stderr"]  # no "... has no effect here and is ignored" noise
