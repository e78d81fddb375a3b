"""Per-language tables of the text front-end, as data: the words a number is read with, units,
currencies, months, times, road prefixes and abbreviations. `normalize.py` compiles them once.

A noun a number counts is (singular, plural, gender); Arabic adds the dual and its own plural
(3-10) and uses the singular after 11 and above (see `normalize._arabic_count`). Gender is "m", "f"
or "n"; it decides "un/une", "uno/una", "ein/eine", "um/uma", the Spanish and Portuguese hundreds
("doscientas millas", "duzentas milhas") and the Arabic 3-10 ("ثلاث ساعات").
Where a language has two standards, the table says which it follows: English is British ("metres"),
Portuguese is Brazilian ("quilômetros", "centavos").
"""

from __future__ import annotations

from dataclasses import dataclass, field

LANGUAGES = ("en", "fr", "es", "pt", "it", "nl", "de", "hi", "ar")


@dataclass(frozen=True)
class Noun:
    one: str
    many: str
    gender: str = "m"
    two: str | None = None  # Arabic dual; None elsewhere

    @property
    def invariant(self) -> bool:
        return self.one == self.many and self.two is None


def N(one: str, many: str | None = None, gender: str = "m", two: str | None = None) -> Noun:
    return Noun(one, one if many is None else many, gender, two)


def AR(one: str, two: str, many: str, gender: str = "m") -> Noun:
    return Noun(one, many, gender, two)


@dataclass(frozen=True)
class Language:
    code: str
    decimal: str            # the decimal separator this language writes
    group: str              # characters that group digits by three (besides thin and no-break spaces)
    point: str              # the word read at the decimal separator
    minus: str
    range_word: str         # "10-12" -> "10 {range_word} 12"
    and_word: str           # "&"
    link: str               # what a URL is read as
    stop: str               # the full stop added to a text that has no final punctuation
    units: dict[str, Noun]
    currencies: dict[str, tuple[Noun, Noun | None]]   # symbol -> (unit, hundredth or None)
    cents_join: str         # between the whole amount and the cents; "" for nothing
    cents_noun: bool        # whether the cents are followed by their noun ("and fifty cents" / "cinquante")
    months: tuple[str, ...]
    date: str               # {d} {m} {y}; {d} is cardinal except where `date_ordinal`
    date_ordinal: str = ""  # "all": the day is an ordinal; "first": only day 1 ("premier", "primo")
    road_prefixes: tuple[str, ...] = ()   # letters read before a road number written with a space ("B 27")
    abbreviations: tuple[tuple[str, str], ...] = ()  # (regex, replacement), applied in order
    # nouns (lowercase starts) that make a number before them feminine: "1 heure" -> "une heure"
    feminine_nouns: str = ""
    # (abbreviation, read before a name, read after one): "St. Mary's" -> Saint, "Baker St." -> Street
    name_abbreviations: tuple[tuple[str, str, str], ...] = ()
    ordinal_suffixes: tuple[tuple[str, str], ...] = ()  # (regex after the digits, gender/form)
    meridiem: dict[str, str] = field(default_factory=dict)


# -- English (British spelling; street suffixes as in USPS Publication 28, titles as in common usage) ------
EN = Language(
    code="en", decimal=".", group=",", point="point", minus="minus", range_word="to", and_word="and",
    link="link", stop=".",
    units={
        "km/h": N("kilometre per hour", "kilometres per hour"), "mph": N("mile per hour", "miles per hour"),
        "kWh": N("kilowatt hour", "kilowatt hours"), "kW": N("kilowatt", "kilowatts"),
        "km": N("kilometre", "kilometres"), "mi": N("mile", "miles"), "ft": N("foot", "feet"),
        "m": N("metre", "metres"), "°C": N("degree Celsius", "degrees Celsius"),
        "°F": N("degree Fahrenheit", "degrees Fahrenheit"), "°": N("degree", "degrees"), "%": N("percent"),
        "L": N("litre", "litres"), "l": N("litre", "litres"), "min": N("minute", "minutes"),
        "h": N("hour", "hours"),
    },
    currencies={"€": (N("euro", "euros"), N("cent", "cents")), "$": (N("dollar", "dollars"), N("cent", "cents")),
                "£": (N("pound", "pounds"), N("penny", "pence")), "¥": (N("yen"), None),
                "₹": (N("rupee", "rupees"), N("paisa", "paise"))},
    cents_join="and", cents_noun=True,
    months=("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
            "November", "December"),
    date="the {d} of {m} {y}", date_ordinal="all",
    road_prefixes=("A", "M", "I", "US", "E", "N", "B"),
    name_abbreviations=(("St", "Saint", "Street"), ("Dr", "Doctor", "Drive")),
    abbreviations=(
        (r"\bMt\.(?=\s+[A-Z])", "Mount"), (r"\bMr\.(?=\s)", "Mister"), (r"\bMrs\.(?=\s)", "Missus"),
        (r"\bAve?\b\.?", "Avenue"), (r"\bRd\b\.?", "Road"), (r"\bBlvd\b\.?", "Boulevard"),
        (r"\bLn\b\.?", "Lane"), (r"\bHwy\b\.?", "Highway"), (r"\bPkwy\b\.?", "Parkway"),
        (r"\bFwy\b\.?", "Freeway"), (r"\bSq\b\.?", "Square"), (r"\bJct\b\.?", "Junction"),
        (r"\bRte\b\.?", "Route"), (r"(?<=\w )Pl\b\.?", "Place"), (r"(?<=\w )Ct\b\.?", "Court"),
        (r"\bapprox\.", "approximately"), (r"\bno\.(?=\s?\d)", "number"), (r"\bNo\.(?=\s?\d)", "Number"),
    ),
    ordinal_suffixes=((r"st|nd|rd|th", "m"),),
    meridiem={"am": "a.m.", "a.m.": "a.m.", "pm": "p.m.", "p.m.": "p.m."},
)

# -- French (voies as abbreviated in the French postal standard AFNOR NF Z 10-011) --------------------
FR = Language(
    code="fr", decimal=",", group=". ", point="virgule", minus="moins", range_word="à", and_word="et",
    link="lien", stop=".",
    units={
        "km/h": N("kilomètre à l'heure", "kilomètres à l'heure"), "mph": N("mile à l'heure", "miles à l'heure"),
        "kWh": N("kilowattheure", "kilowattheures"), "kW": N("kilowatt", "kilowatts"),
        "km": N("kilomètre", "kilomètres"), "mi": N("mile", "miles"), "ft": N("pied", "pieds"),
        "m": N("mètre", "mètres"), "°C": N("degré Celsius", "degrés Celsius"),
        "°F": N("degré Fahrenheit", "degrés Fahrenheit"), "°": N("degré", "degrés"), "%": N("pour cent"),
        "L": N("litre", "litres"), "l": N("litre", "litres"), "min": N("minute", "minutes", "f"),
        "h": N("heure", "heures", "f"),
    },
    currencies={"€": (N("euro", "euros"), N("centime", "centimes")), "$": (N("dollar", "dollars"), N("cent", "cents")),
                "£": (N("livre", "livres", "f"), N("penny", "pence")), "¥": (N("yen", "yens"), None),
                "₹": (N("roupie", "roupies", "f"), N("paisa", "paise"))},
    cents_join="", cents_noun=False,
    feminine_nouns=r"heures?\b|minutes?\b|secondes?\b|fois\b|sorties?\b|rues?\b|personnes?\b|places?\b|"
                   r"semaines?\b|routes?\b|voies?\b|livres?\b|roues?\b|étoiles?\b",
    months=("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
            "novembre", "décembre"),
    date="{d} {m} {y}", date_ordinal="first",
    road_prefixes=("A", "N", "D", "E", "RN", "RD"),
    abbreviations=(
        (r"\bSt(?=[- ][A-ZÉÈ])", "Saint"), (r"\bSte(?=[- ][A-ZÉÈ])", "Sainte"),
        (r"\b(?:bd|bld|boul)\b\.?", "boulevard"), (r"\bBd\b\.?", "Boulevard"),
        (r"\bav\b\.?(?=\s)", "avenue"), (r"\bAv\b\.?(?=\s)", "Avenue"),
        (r"\bpl\.(?=\s)", "place"), (r"\brte\b\.?(?=\s)", "route"), (r"\bch\.(?=\s)", "chemin"),
        (r"\bimp\.(?=\s)", "impasse"), (r"\bf(?:b)?g\b\.?(?=\s)", "faubourg"), (r"\ball\.(?=\s)", "allée"),
        (r"\bM\.(?=\s+[A-ZÉÈ])", "Monsieur"), (r"\bMme\b\.?", "Madame"), (r"\bMlle\b\.?", "Mademoiselle"),
        (r"\bDr\b\.?(?=\s+[A-ZÉÈ])", "docteur"), (r"\benv\.(?=\s)", "environ"),
        (r"\b[nN]°\s?(?=\d)", "numéro "),
    ),
    ordinal_suffixes=((r"ers?", "m"), (r"res?|ères?", "f"), (r"ndes?", "second-f"), (r"nds?", "second"),
                      (r"èmes?|es?|ᵉ", "m")),
)

# -- Spanish (abbreviations from the RAE's list of abbreviations) --------------------------------------
ES = Language(
    code="es", decimal=",", group=".", point="coma", minus="menos", range_word="a", and_word="y",
    link="enlace", stop=".",
    units={
        "km/h": N("kilómetro por hora", "kilómetros por hora"), "mph": N("milla por hora", "millas por hora", "f"),
        "kWh": N("kilovatio hora", "kilovatios hora"), "kW": N("kilovatio", "kilovatios"),
        "km": N("kilómetro", "kilómetros"), "mi": N("milla", "millas", "f"), "ft": N("pie", "pies"),
        "m": N("metro", "metros"), "°C": N("grado Celsius", "grados Celsius"),
        "°F": N("grado Fahrenheit", "grados Fahrenheit"), "°": N("grado", "grados"), "%": N("por ciento"),
        "L": N("litro", "litros"), "l": N("litro", "litros"), "min": N("minuto", "minutos"),
        "h": N("hora", "horas", "f"),
    },
    currencies={"€": (N("euro", "euros"), N("céntimo", "céntimos")),
                "$": (N("dólar", "dólares"), N("centavo", "centavos")),
                "£": (N("libra", "libras", "f"), N("penique", "peniques")), "¥": (N("yen", "yenes"), None),
                "₹": (N("rupia", "rupias", "f"), N("paisa", "paisas"))},
    cents_join="con", cents_noun=False,
    feminine_nouns=r"horas?\b|millas?\b|libras?\b|personas?\b|salidas?\b|calles?\b|semanas?\b|vez\b|"
                   r"veces\b|plazas?\b|rupias?\b|ruedas?\b|estrellas?\b",
    months=("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
            "noviembre", "diciembre"),
    date="{d} de {m} de {y}",
    road_prefixes=("A", "AP", "N", "M", "C", "E"),
    abbreviations=(
        # the generic word of a street name is written in lowercase (RAE): "la avenida de América"
        (r"\b[Aa]vda\.", "avenida"), (r"\b[Aa]v\.", "avenida"), (r"\bC/\s?", "calle "), (r"\b[Pp]za\.", "plaza"),
        (r"\b[Cc]tra\.", "carretera"), (r"\b[Pp]\.º", "paseo"),
        (r"\bSra\.", "señora"), (r"\bSrta\.", "señorita"), (r"\bSr\.", "señor"), (r"\bDra\.", "doctora"),
        (r"\bDr\.", "doctor"), (r"\bSta\.", "Santa"), (r"\bSto\.", "Santo"), (r"\bUds\.", "ustedes"),
        (r"\bUd\.", "usted"), (r"\baprox\.", "aproximadamente"), (r"\b[nN]\.?º\s?(?=\d)", "número "),
        (r"\bnúm\.\s?(?=\d)", "número "),
    ),
    ordinal_suffixes=((r"\.?er", "apocope"), (r"\.?º", "m"), (r"\.?ª", "f")),
)

# -- Portuguese (Brazilian spelling) ----------------------------------------------------------------------
PT = Language(
    code="pt", decimal=",", group=".", point="vírgula", minus="menos", range_word="a", and_word="e",
    link="link", stop=".",
    units={
        "km/h": N("quilômetro por hora", "quilômetros por hora"), "mph": N("milha por hora", "milhas por hora", "f"),
        "kWh": N("quilowatt-hora", "quilowatts-hora"), "kW": N("quilowatt", "quilowatts"),
        "km": N("quilômetro", "quilômetros"), "mi": N("milha", "milhas", "f"), "ft": N("pé", "pés"),
        "m": N("metro", "metros"), "°C": N("grau Celsius", "graus Celsius"),
        "°F": N("grau Fahrenheit", "graus Fahrenheit"), "°": N("grau", "graus"), "%": N("por cento"),
        "L": N("litro", "litros"), "l": N("litro", "litros"), "min": N("minuto", "minutos"),
        "h": N("hora", "horas", "f"),
    },
    currencies={"€": (N("euro", "euros"), N("centavo", "centavos")),
                "$": (N("dólar", "dólares"), N("centavo", "centavos")),
                "£": (N("libra", "libras", "f"), N("pêni", "pence")), "¥": (N("iene", "ienes"), None),
                "₹": (N("rupia", "rupias", "f"), N("paisa", "paisas"))},
    cents_join="e", cents_noun=True,
    feminine_nouns=r"horas?\b|milhas?\b|libras?\b|pessoas?\b|saídas?\b|ruas?\b|semanas?\b|vez\b|"
                   r"vezes\b|rupias?\b|rodas?\b|estrelas?\b|faixas?\b",
    months=("janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto", "setembro", "outubro",
            "novembro", "dezembro"),
    date="{d} de {m} de {y}", date_ordinal="first",
    road_prefixes=("A", "IP", "IC", "N", "EN", "BR", "SP"),
    abbreviations=(
        (r"\bAv\.", "Avenida"), (r"\bR\.(?=\s+[A-ZÁÉÍÓÚ])", "Rua"), (r"\bPça\.", "Praça"), (r"\bPç\.", "Praça"),
        (r"\bEstr\.", "Estrada"), (r"\bTrav\.", "Travessa"), (r"\bLg\.", "Largo"), (r"\bAl\.", "Alameda"),
        (r"\bRod\.", "Rodovia"), (r"\bDra\.", "doutora"), (r"\bDr\.", "doutor"), (r"\bSra\.", "senhora"),
        (r"\bSr\.", "senhor"), (r"\bSta\.", "Santa"), (r"\bSto\.", "Santo"), (r"\baprox\.", "aproximadamente"),
        (r"\b[nN]\.?º\s?(?=\d)", "número "),
    ),
    ordinal_suffixes=((r"\.?º", "m"), (r"\.?ª", "f")),
)

# -- Italian ------------------------------------------------------------------------------------------------
IT = Language(
    code="it", decimal=",", group=".", point="virgola", minus="meno", range_word="a", and_word="e",
    link="link", stop=".",
    units={
        "km/h": N("chilometro orario", "chilometri orari"), "mph": N("miglio orario", "miglia orarie"),
        "kWh": N("chilowattora"), "kW": N("chilowatt"),
        "km": N("chilometro", "chilometri"), "mi": N("miglio", "miglia"), "ft": N("piede", "piedi"),
        "m": N("metro", "metri"), "°C": N("grado Celsius", "gradi Celsius"),
        "°F": N("grado Fahrenheit", "gradi Fahrenheit"), "°": N("grado", "gradi"), "%": N("per cento"),
        "L": N("litro", "litri"), "l": N("litro", "litri"), "min": N("minuto", "minuti"),
        "h": N("ora", "ore", "f"),
    },
    currencies={"€": (N("euro"), N("centesimo", "centesimi")), "$": (N("dollaro", "dollari"), N("centesimo", "centesimi")),
                "£": (N("sterlina", "sterline", "f"), N("penny", "pence")), "¥": (N("yen"), None),
                "₹": (N("rupia", "rupie", "f"), N("paisa"))},
    cents_join="e", cents_noun=False,
    feminine_nouns=r"or[ae]\b|person[ae]\b|uscit[ae]\b|strad[ae]\b|settiman[ae]\b|volt[ae]\b|"
                   r"sterlin[ae]\b|rupi[ae]\b|corsi[ae]\b|stell[ae]\b",
    months=("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno", "luglio", "agosto", "settembre",
            "ottobre", "novembre", "dicembre"),
    date="{d} {m} {y}", date_ordinal="first",
    road_prefixes=("A", "SS", "SP", "SR", "E"),
    abbreviations=(
        (r"\bV\.le\b", "Viale"), (r"\bP\.zz?a\b", "Piazza"), (r"\bC\.so\b", "Corso"), (r"\bL\.go\b", "Largo"),
        (r"\bStr\.", "Strada"), (r"\bSig\.ra\b", "signora"), (r"\bSig\.", "signor"),
        (r"\bDott\.ssa\b", "dottoressa"), (r"\bDott\.", "dottor"), (r"\bProf\.", "professor"),
        (r"\bca\.(?=\s)", "circa"), (r"\b[nN]\.\s?(?=\d)", "numero "),
    ),
    ordinal_suffixes=((r"\.?º", "m"), (r"\.?ª", "f")),
)

# -- Dutch --------------------------------------------------------------------------------------------------
NL = Language(
    code="nl", decimal=",", group=".", point="komma", minus="min", range_word="tot", and_word="en",
    link="link", stop=".",
    units={
        "km/h": N("kilometer per uur"), "mph": N("mijl per uur"), "kWh": N("kilowattuur"), "kW": N("kilowatt"),
        "km": N("kilometer"), "mi": N("mijl"), "ft": N("voet"), "m": N("meter"),
        "°C": N("graad Celsius", "graden Celsius"), "°F": N("graad Fahrenheit", "graden Fahrenheit"),
        "°": N("graad", "graden"), "%": N("procent"), "L": N("liter"), "l": N("liter"),
        "min": N("minuut", "minuten"), "h": N("uur"),
    },
    currencies={"€": (N("euro"), N("cent")), "$": (N("dollar"), N("cent")), "£": (N("pond"), N("penny", "pence")),
                "¥": (N("yen"), None), "₹": (N("roepie", "roepies"), N("paisa", "paise"))},
    cents_join="", cents_noun=False,
    months=("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september", "oktober",
            "november", "december"),
    date="{d} {m} {y}",
    road_prefixes=("A", "N", "E", "S"),
    abbreviations=(
        (r"(?<=\w)str\.", "straat"), (r"(?<=\w)ln\.", "laan"), (r"(?<=\w)pl\.", "plein"),
        (r"\b[dD]hr\.", "de heer"), (r"\b[mM]evr\.", "mevrouw"), (r"\b[nN]r\.(?=\s*\d)", "nummer"),
        (r"\bbijv\.", "bijvoorbeeld"), (r"\bca\.(?=\s)", "circa"), (r"\benz\.", "enzovoort"),
        (r"\bo\.a\.", "onder andere"), (r"\bz\.s\.m\.", "zo snel mogelijk"),
    ),
    ordinal_suffixes=((r"ste|de|e", "m"),),
)

# -- German ---------------------------------------------------------------------------------------------------
DE = Language(
    code="de", decimal=",", group=".", point="Komma", minus="minus", range_word="bis", and_word="und",
    link="Link", stop=".",
    units={
        "km/h": N("Kilometer pro Stunde"), "mph": N("Meile pro Stunde", "Meilen pro Stunde", "f"),
        "kWh": N("Kilowattstunde", "Kilowattstunden", "f"), "kW": N("Kilowatt", gender="n"),
        "km": N("Kilometer"), "mi": N("Meile", "Meilen", "f"), "ft": N("Fuß"), "m": N("Meter"),
        "°C": N("Grad Celsius", gender="n"), "°F": N("Grad Fahrenheit", gender="n"), "°": N("Grad", gender="n"),
        "%": N("Prozent", gender="n"), "L": N("Liter"), "l": N("Liter"), "min": N("Minute", "Minuten", "f"),
        "h": N("Stunde", "Stunden", "f"), "Uhr": N("Uhr", gender="n"),  # "ein Uhr", "einundzwanzig Uhr"
    },
    currencies={"€": (N("Euro"), N("Cent")), "$": (N("Dollar"), N("Cent")), "£": (N("Pfund", gender="n"),
                N("Penny", "Pence")), "¥": (N("Yen"), None), "₹": (N("Rupie", "Rupien", "f"), N("Paisa", "Paise"))},
    cents_join="", cents_noun=False,
    feminine_nouns=r"stunden?\b|minuten?\b|sekunden?\b|meilen?\b|ausfahrt(?:en)?\b|person(?:en)?\b|"
                   r"straßen?\b|wochen?\b|spur(?:en)?\b|rupien?\b",
    months=("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober",
            "November", "Dezember"),
    date="{d} {m} {y}", date_ordinal="all",
    road_prefixes=("A", "B", "L", "K", "E", "St"),
    abbreviations=(
        (r"(?<=\w)str\.", "straße"), (r"\bStr\.", "Straße"), (r"(?<=\w)pl\.", "platz"), (r"\bPl\.", "Platz"), (r"\bHbf\b\.?", "Hauptbahnhof"),
        (r"\bBhf\b\.?", "Bahnhof"), (r"\bAusf\.", "Ausfahrt"), (r"\bNr\.", "Nummer"), (r"\bca\.", "circa"),
        (r"\bz\.\s?B\.", "zum Beispiel"), (r"\bbzw\.", "beziehungsweise"), (r"\busw\.", "und so weiter"),
        (r"\bd\.\s?h\.", "das heißt"), (r"\bu\.\s?a\.", "unter anderem"), (r"\binkl\.", "inklusive"),
        (r"\bggf\.", "gegebenenfalls"), (r"\bDr\.", "Doktor"), (r"\bHr\.", "Herr"),
        (r"\bSt\.(?=\s+[A-ZÄÖÜ])", "Sankt"),
    ),
)

# -- Hindi (numbers: normalize.HINDI_CARDINALS) ----------------------------------------------------------------
HI = Language(
    code="hi", decimal=".", group=",", point="दशमलव", minus="माइनस", range_word="से", and_word="और",
    link="लिंक", stop="।",
    units={
        "km/h": N("किलोमीटर प्रति घंटा"), "mph": N("मील प्रति घंटा"), "kWh": N("किलोवाट घंटा"), "kW": N("किलोवाट"),
        "km": N("किलोमीटर"), "किमी": N("किलोमीटर"), "कि.मी.": N("किलोमीटर"), "mi": N("मील"), "ft": N("फ़ुट"),
        "m": N("मीटर"), "मी": N("मीटर"), "°C": N("डिग्री सेल्सियस"), "°F": N("डिग्री फ़ारेनहाइट"), "°": N("डिग्री"),
        "%": N("प्रतिशत"), "L": N("लीटर"), "l": N("लीटर"), "min": N("मिनट"), "h": N("घंटा", "घंटे"),
    },
    currencies={"€": (N("यूरो"), N("सेंट")), "$": (N("डॉलर"), N("सेंट")), "£": (N("पाउंड"), N("पेंस")),
                "¥": (N("येन"), None), "₹": (N("रुपया", "रुपये"), N("पैसा", "पैसे")),
                "रु.": (N("रुपया", "रुपये"), N("पैसा", "पैसे")), "Rs.": (N("रुपया", "रुपये"), N("पैसा", "पैसे"))},
    cents_join="", cents_noun=True,
    months=("जनवरी", "फ़रवरी", "मार्च", "अप्रैल", "मई", "जून", "जुलाई", "अगस्त", "सितंबर", "अक्टूबर", "नवंबर",
            "दिसंबर"),
    date="{d} {m} {y}",
    road_prefixes=("NH", "SH"),
    abbreviations=((r"डॉ\.", "डॉक्टर"),),
)

# -- Arabic (Modern Standard; counted nouns: singular/dual/plural, see normalize._arabic_count) ------------------
AR_ = Language(
    code="ar", decimal=".٫", group=",٬", point="فاصلة", minus="سالب", range_word="إلى", and_word="و",
    link="رابط", stop=".",
    units={
        "km/h": AR("كيلومتر في الساعة", "كيلومتران في الساعة", "كيلومترات في الساعة"),
        "كم/س": AR("كيلومتر في الساعة", "كيلومتران في الساعة", "كيلومترات في الساعة"),
        "mph": AR("ميل في الساعة", "ميلان في الساعة", "أميال في الساعة"),
        "kWh": N("كيلوواط ساعة"), "kW": N("كيلوواط"),
        "km": AR("كيلومتر", "كيلومتران", "كيلومترات"), "كم": AR("كيلومتر", "كيلومتران", "كيلومترات"),
        "mi": AR("ميل", "ميلان", "أميال"), "ft": AR("قدم", "قدمان", "أقدام"),
        "m": AR("متر", "متران", "أمتار"), "م": AR("متر", "متران", "أمتار"),
        "°C": AR("درجة مئوية", "درجتان مئويتان", "درجات مئوية", "f"),
        "°F": AR("درجة فهرنهايت", "درجتان فهرنهايت", "درجات فهرنهايت", "f"),
        "°": AR("درجة", "درجتان", "درجات", "f"), "%": N("في المئة"), "٪": N("في المئة"),
        "L": AR("لتر", "لتران", "لترات"), "l": AR("لتر", "لتران", "لترات"),
        "min": AR("دقيقة", "دقيقتان", "دقائق", "f"), "h": AR("ساعة", "ساعتان", "ساعات", "f"),
    },
    currencies={"€": (N("يورو"), AR("سنت", "سنتان", "سنتات")), "$": (AR("دولار", "دولاران", "دولارات"),
                AR("سنت", "سنتان", "سنتات")), "£": (AR("جنيه", "جنيهان", "جنيهات"), AR("بنس", "بنسان", "بنسات")),
                "¥": (N("ين"), None), "₹": (AR("روبية", "روبيتان", "روبيات", "f"), AR("بيسة", "بيستان", "بيسات", "f"))},
    cents_join="و", cents_noun=True,
    months=("يناير", "فبراير", "مارس", "أبريل", "مايو", "يونيو", "يوليو", "أغسطس", "سبتمبر", "أكتوبر", "نوفمبر",
            "ديسمبر"),
    date="{d} {m} {y}",
    road_prefixes=("E",),
    abbreviations=((r"(?<!\w)د\.(?=\s)", "الدكتور"), (r"(?<!\w)ش\.(?=\s)", "شارع"), (r"(?<!\w)ص\.ب\.", "صندوق بريد")),
)

RULES: dict[str, Language] = {lang.code: lang for lang in (EN, FR, ES, PT, IT, NL, DE, HI, AR_)}
assert tuple(RULES) == LANGUAGES

# Voice names of the released checkpoint start with their language; the English presets are named by mood.
ENGLISH_VOICE_PREFIXES = ("casual", "neutral", "cheerful")

# Hindi cardinals 0-99: each is its own word (CLDR's Hindi spell-out rules list the same words; tests check a
# sample against them). Above 99 a number is built from these with सौ (100), हज़ार (1000), लाख (10^5),
# करोड़ (10^7).
HINDI_CARDINALS = (
    "शून्य एक दो तीन चार पाँच छह सात आठ नौ "
    "दस ग्यारह बारह तेरह चौदह पंद्रह सोलह सत्रह अठारह उन्नीस "
    "बीस इक्कीस बाईस तेईस चौबीस पच्चीस छब्बीस सत्ताईस अट्ठाईस उनतीस "
    "तीस इकतीस बत्तीस तैंतीस चौंतीस पैंतीस छत्तीस सैंतीस अड़तीस उनतालीस "
    "चालीस इकतालीस बयालीस तैंतालीस चौवालीस पैंतालीस छियालीस सैंतालीस अड़तालीस उनचास "
    "पचास इक्यावन बावन तिरेपन चौवन पचपन छप्पन सत्तावन अट्ठावन उनसठ "
    "साठ इकसठ बासठ तिरेसठ चौंसठ पैंसठ छियासठ सड़सठ अड़सठ उनहत्तर "
    "सत्तर इकहत्तर बहत्तर तिहत्तर चौहत्तर पचहत्तर छिहत्तर सतहत्तर अठहत्तर उनासी "
    "अस्सी इक्यासी बयासी तिरासी चौरासी पचासी छियासी सत्तासी अट्ठासी नवासी "
    "नब्बे इक्यानबे बानबे तिरानबे चौरानबे पंचानबे छियानबे सत्तानबे अट्ठानबे निन्यानबे"
).split()
assert len(HINDI_CARDINALS) == 100
HINDI_POWERS = ((10**7, "करोड़"), (10**5, "लाख"), (1000, "हज़ार"), (100, "सौ"))
