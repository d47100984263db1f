"""The composition root: Chat resolves the model, its price and the small-model strategy over a Session."""

from agent import Chat
from agent.core.backend import Capabilities
from agent.core.loop import PLAIN
from agent.core.session import Session
from agent.models.scripted import ScriptedBackend
from agent.smallmodel.shots import pick
from agent.smallmodel.strategy import EXAMPLE_BONUS, SMALL_MODEL_SYSTEM, SmallModelStrategy


def small_backend(replies):
    """A scripted model without tool training that takes the decoding guides, as the local one does."""
    return ScriptedBackend(replies, capabilities=Capabilities(tools=False, streaming=False, grounds_numbers=True,
                                                              favours_tokens=True))


def test_a_model_without_tools_gets_the_small_model_prompt_and_strategy(tmp_path):
    with Chat(backend=small_backend([]), workspace=tmp_path) as chat:
        assert chat.system == SMALL_MODEL_SYSTEM and isinstance(chat.strategy, SmallModelStrategy)
    with Chat(backend=ScriptedBackend([]), workspace=tmp_path) as chat:
        assert chat.system != SMALL_MODEL_SYSTEM and chat.strategy is PLAIN and isinstance(chat, Session)


def test_load_resumes_with_the_saved_model(tmp_path):
    with Chat(backend=ScriptedBackend(["hi"], model="gpt-4o-mini"), workspace=tmp_path) as chat:
        chat("hello")
        path = chat.save(tmp_path / "c.json")
    with Chat.load(path, backend=ScriptedBackend([], model="gpt-4o-mini"), workspace=tmp_path) as again:
        assert again.answer == "hi" and again.model == "gpt-4o-mini" and again.id == chat.id
        assert Chat.saved_options(again.conversation())["model"] == "gpt-4o-mini"


def test_the_small_model_mode_follows_the_model(tmp_path):
    with Chat(backend=ScriptedBackend(["hi"]), workspace=tmp_path) as chat:
        assert not chat.answer_from_output and chat.examples == [] and chat.example_bonus == 0
        chat.use_backend(small_backend(["```python\nprint(6 * 7)\n```"]))  # as /model in the terminal chat
        assert chat.answer_from_output and chat.examples is pick and chat.ground_numbers
        assert chat.example_bonus == EXAMPLE_BONUS and chat.max_tokens_per_step == 384
        assert chat("What is 6 times 7?") == "42"
    with Chat(backend=small_backend([]), workspace=tmp_path, answer_from_output=False) as chat:
        assert chat.examples == [] and not chat.ground_numbers and chat.example_bonus == 0
        assert not chat.answer_from_output and chat.max_tokens_per_step == 384


def test_the_strategy_is_one_object_the_chat_forwards_its_knobs_to(tmp_path):
    backend = small_backend(["```python\nprint(6 * 7)\n```", "It is 42."])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert isinstance(chat.strategy, SmallModelStrategy) and chat.strategy is chat.small_model
        chat.attempts = 2
        assert chat.small_model.attempts == 2
        chat.answer_from_output = False  # the plain tool loop, the knobs kept for when it is back on
        assert chat("What is 6 times 7?") == "It is 42."  # the model's own words; no examples sent
        assert [m.role for m in backend.requests[0]] == ["system", "user"]
        chat.answer_from_output = True
        assert chat.attempts == 2


def test_switching_to_a_model_that_takes_tools_in_its_prompt_says_so_once(tmp_path):
    def get_weather(city: str) -> str:
        """Get the weather."""
        return city

    prompted = small_backend([])
    prompted.tools_note = "tools described in the prompt"  # as TransformersBackend says for template-less models
    with Chat(backend=ScriptedBackend([]), tools=[get_weather], workspace=tmp_path) as chat:
        assert chat.notices == []
        chat.use_backend(prompted)
        chat.use_backend(prompted)
        assert chat.notices == ["tools described in the prompt"]
    with Chat(backend=ScriptedBackend([]), workspace=tmp_path) as chat:  # no custom tools: nothing to say
        chat.use_backend(prompted)
        assert chat.notices == []
