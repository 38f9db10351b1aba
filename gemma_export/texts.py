"""Built-in text: the validation prompt set and calibration text (written for this project)."""

PROMPTS = [
    "The capital of France is Paris. It is known for the Eiffel Tower, museums such as the Louvre,"
    " and its cafés along the Seine.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Der schnelle braune Fuchs springt über den faulen Hund. Übung macht den Meister!",
    "Prices rose 3.7% in 2023; 1,024 units cost $12,345.67 (about €11,400).",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "In mathematics, a prime number is a natural number greater than 1 that is not a product of two"
    " smaller natural numbers. 🙂 Emoji and    spaces\tand tabs.",
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into"
    " chemical energy. Inside the chloroplasts, chlorophyll absorbs mostly blue and red light, and the"
    " energy splits water molecules, releasing oxygen as a by-product. The captured energy is stored"
    " in sugars built from carbon dioxide taken from the air. Almost every food chain on Earth starts"
    " with this reaction, and the oxygen we breathe is its long-term result.",
    "SELECT customer_id, SUM(amount) AS total\nFROM orders\nWHERE created_at >= '2024-01-01'\n"
    "GROUP BY customer_id\nHAVING SUM(amount) > 1000\nORDER BY total DESC;\n",
    "Once upon a time, in a village at the edge of a great forest, there lived an old clockmaker who"
    " never let anyone into his workshop. Every evening the children gathered at his window to watch"
    " the gears turn, and every evening he drew the curtain just as the largest clock began to chime."
    " One winter night the chime did not come, and the children knocked on his door.",
    "Le soleil se lève à l'est et se couche à l'ouest. En été, les journées sont longues et chaudes;"
    " en hiver, elles sont courtes et froides. ¿Dónde está la biblioteca? 東京は日本の首都です。",
]

# Calibration text for the passes that measure activations (precision, activation-aware int4):
# different from PROMPTS, so that validation never scores the text a quantizer was fitted to.
CALIBRATION = [
    "The committee met on Tuesday to review the budget for the coming year. After a long discussion,"
    " the members agreed to increase spending on public libraries by twelve percent, while funding"
    " for road repairs will stay at last year's level. The mayor said the decision reflected what"
    " residents had asked for at the town hall meetings held in the spring.",
    "import json\nfrom pathlib import Path\n\n\ndef load_settings(path: Path) -> dict:\n"
    "    \"\"\"Read the settings file, falling back to defaults.\"\"\"\n    if not path.exists():\n"
    "        return {\"theme\": \"light\", \"retries\": 3}\n    with path.open() as f:\n"
    "        return json.load(f)\n\n\nclass Cache:\n    def __init__(self, size=128):\n"
    "        self.size = size\n        self.items = {}\n",
    "<start_of_turn>user\nCan you explain why the sky is blue?<end_of_turn>\n<start_of_turn>model\n"
    "Sunlight contains every colour. When it passes through the atmosphere, the short blue"
    " wavelengths are scattered by air molecules much more than the long red ones, so blue light"
    " reaches your eyes from every direction of the sky.<end_of_turn>\n",
    "A black hole is a region of spacetime where gravity is so strong that nothing, not even light,"
    " can escape. The boundary of no return is called the event horizon. Stellar black holes form"
    " when massive stars collapse at the end of their lives, and supermassive ones, millions or"
    " billions of times heavier than the Sun, sit at the centres of most galaxies.",
    "## Shopping list\n\n- 2 kg potatoes\n- 1 dozen eggs\n- olive oil (500 ml)\n- fresh basil\n\n"
    "| item | price |\n|------|-------|\n| bread | 2.40 |\n| milk | 1.15 |\n| coffee | 7.99 |\n\n"
    "Total: 11.54 EUR, paid by card on 14/03/2024 at 18:42.",
    "Il était une fois un petit prince qui vivait sur une planète à peine plus grande que lui."
    " Im Herbst fallen die Blätter von den Bäumen, und die Tage werden kürzer."
    " La ciencia avanza cuando alguien se atreve a hacer una pregunta sencilla."
    " 春は桜が咲き、人々は公園で花見を楽しみます。 Москва — столица России.",
    "function debounce(fn, wait) {\n  let timer;\n  return (...args) => {\n    clearTimeout(timer);\n"
    "    timer = setTimeout(() => fn.apply(this, args), wait);\n  };\n}\n\n"
    "const total = [3, 1, 4, 1, 5, 9, 2, 6].filter(n => n % 2).reduce((a, b) => a + b, 0);\n",
    "The experiment was repeated five times. In each trial the temperature was raised from 20 to 80"
    " degrees Celsius in steps of 10 degrees, and the reaction time was recorded. The mean reaction"
    " time fell from 41.3 seconds to 6.8 seconds, roughly halving with every 12 degrees, which is"
    " consistent with the Arrhenius equation.",
]
